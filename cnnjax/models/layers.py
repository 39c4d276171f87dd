"""Building blocks shared by several model families: squeeze-excitation, torchvision's
Conv2dNormActivation, channel rounding, the headless-backbone rule and feature maps by stride.

Every backbone records, besides its family's names (`stem`, `stage1`..., `pre_logits`), each
map a head may want under `stride{s}`: the *last* map at output stride s (the one just before
the next downsampling, as timm's `features_only` and detectron2's res2..res5), for every
power-of-two stride the network produces. A head asks for them with `features_at`.
"""

import re
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cnnjax.errors import ConfigError

ModuleDef = Any


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018): x * gate(fc2(act(fc1(mean_hw(x))))).

    x: [B, H, W, C] -> [B, H, W, C]. `fc1`/`fc2` are 1x1 convolutions with bias (torchvision's
    SqueezeExcitation names). The bottleneck width is `squeeze_channels` when given, else
    max(1, int(C * rd_ratio)); SENet uses rd_ratio 1/16, EfficientNet passes in_channels // 4.
    """

    squeeze_channels: int | None = None
    rd_ratio: float = 1 / 16
    act: Callable = nn.relu
    gate: Callable = nn.sigmoid
    conv: ModuleDef = nn.Conv

    @nn.compact
    def __call__(self, x):
        if self.squeeze_channels is None and self.rd_ratio <= 0:
            raise ConfigError(f"SqueezeExcite rd_ratio must be > 0, got {self.rd_ratio}")
        if self.squeeze_channels is not None and self.squeeze_channels < 1:
            raise ConfigError(
                f"SqueezeExcite squeeze_channels must be >= 1, got {self.squeeze_channels}"
            )
        squeeze = self.squeeze_channels or max(1, int(x.shape[-1] * self.rd_ratio))
        s = jnp.mean(x, axis=(1, 2), keepdims=True)
        s = self.act(self.conv(squeeze, (1, 1), use_bias=True, name="fc1")(s))
        s = self.gate(self.conv(x.shape[-1], (1, 1), use_bias=True, name="fc2")(s))
        return x * s


# Activations a config can name (`--config.model.kwargs.act=tanh`): models.create maps the name
# to the function for a model's `act` field. leaky_relu has PyTorch's default slope, 0.01.
ACTIVATIONS: dict[str, Callable] = {
    "relu": nn.relu,
    "leaky_relu": lambda x: nn.leaky_relu(x, negative_slope=0.01),
    "tanh": nn.tanh,
    "sigmoid": nn.sigmoid,
    "elu": nn.elu,
    "gelu": nn.gelu,
    "silu": nn.silu,
    "identity": lambda x: x,
}


def conv_norm_act(
    x,
    features: int,
    kernel: int,
    *,
    conv: ModuleDef,
    norm: ModuleDef,
    act: Callable | None,
    name: str,
    strides: int = 1,
    groups: int = 1,
):
    """torchvision's Conv2dNormActivation: conv `{name}_0` (no bias), BN `{name}_1`, then `act`.

    Call only inside an `nn.compact` method (the modules attach to the calling module).
    Padding is torchvision's symmetric (k - 1) // 2. x: [B, H, W, Cin] -> [B, H', W', features].
    """
    p = (kernel - 1) // 2
    y = conv(
        features,
        (kernel, kernel),
        (strides, strides),
        padding=((p, p), (p, p)),
        feature_group_count=groups,
        name=f"{name}_0",
    )(x)
    y = norm(name=f"{name}_1")(y)
    return act(y) if act is not None else y


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """torchvision's `_make_divisible`: round v to a multiple of divisor, never 10% below v."""
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def feature_name(stride: int) -> str:
    """Name of a backbone map at output `stride`: 'stem' up to 2, 'stage{k}' at 2**(k + 1).

    A model records every map under this name, so each entry holds the last map at its
    stride: 'stage1' /4, 'stage2' /8, 'stage3' /16, 'stage4' /32 (the map that is pooled).
    """
    return "stem" if stride <= 2 else f"stage{stride.bit_length() - 2}"


def require_min_size(x, size: int, what: str) -> None:
    """ConfigError naming `what` if NHWC `x` is smaller than `size` x `size` pixels."""
    if min(x.shape[1:3]) < size:
        raise ConfigError(
            f"{what} needs images of at least {size}x{size} px, got {x.shape[1]}x{x.shape[2]}"
        )


def has_classifier(num_classes: int) -> bool:
    """False for num_classes == 0: the model is a headless backbone (timm's convention).

    A headless model builds no classification layer and returns `features['pre_logits']` as
    its outputs; negative counts are a ConfigError.
    """
    if num_classes < 0:
        raise ConfigError(f"num_classes must be >= 0 (0: a headless backbone), got {num_classes}")
    return num_classes > 0


def record_map(feats: dict, x, stride: int) -> None:
    """Stores x under `feature_name(stride)` and `stride{stride}`; a later map at the same
    stride replaces it, so each entry ends up holding the last map at its stride."""
    feats[feature_name(stride)] = feats[f"stride{stride}"] = x


_STRIDE_KEY = re.compile(r"stride(\d+)")


def maps_by_stride(features: dict) -> dict[int, Any]:
    """{s: features['stride{s}']} for every stride map a backbone returned, ascending.

    Each value is [B, H', W', C] with H' = ceil(H / s) for 'same'-padded networks (a few
    pixels less where a family uses unpadded convolutions: AlexNet, SqueezeNet, Xception,
    LeNet).
    """
    found = {int(m[1]): v for k, v in features.items() if (m := _STRIDE_KEY.fullmatch(k))}
    return dict(sorted(found.items()))


def features_at(features: dict, strides: Sequence[int]) -> tuple:
    """The backbone maps at `strides` (e.g. (8, 16, 32)), in that order.

    features: a backbone's features dict. -> tuple of [B, H/s, W/s, C_s] arrays. ConfigError
    listing the available strides when one is missing (e.g. stride 32 of a ResNet built with
    output_stride=16).
    """
    maps = maps_by_stride(features)
    missing = [s for s in strides if s not in maps]
    if missing:
        raise ConfigError(
            f"the backbone has no feature map at stride(s) {missing}; available strides: "
            f"{sorted(maps)} (features {sorted(features)})"
        )
    return tuple(maps[s] for s in strides)
