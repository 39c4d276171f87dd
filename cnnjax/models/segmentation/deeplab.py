"""DeepLab v3 (Chen et al. 2017, "Rethinking Atrous Convolution") and torchvision's "FCN" head,
both on a dilated registry ResNet, as torchvision's `segmentation.deeplabv3_resnet50` and
`segmentation.fcn_resnet50` (names mirror them, so their state dicts convert: convert/rules.py).

`deeplabv3`: the backbone's last map (output stride 8 or 16) -> ASPP (a 1x1 branch, three 3x3
atrous branches at `rates`, image-level pooling; 256 channels each with BN + ReLU,
concatenated, projected by 1x1 + BN + ReLU + dropout 0.5) -> 3x3 conv 256 + BN + ReLU -> 1x1
conv to the classes -> bilinear upsampling to the input (align_corners=False). The rates
default to the paper's (6, 12, 18) at output stride 16, doubled to (12, 24, 36) at 8 (what
torchvision builds). `multi_grid` gives the last stage's unit rates: the dilation each block
of ResNet's layer4 already has is multiplied by them. (1, 1, 1) is torchvision's network; the
paper's (1, 2, 4) at output stride 16 gives layer4 dilations (1, 4, 8) here, and at 8 (2, 8,
16): the first unit keeps torchvision's rate (its position carries the stride in the undilated
net) where the paper's TF-slim ResNet, which strides at the end of the previous block, has
(2, 4, 8) / (4, 8, 16).

`fcn_resnet`: torchvision's FCN (a dilated ResNet at output stride 8 with FCNHead: 3x3 conv to
in/4 channels + BN + ReLU + dropout 0.1 + 1x1 conv), not the paper's FCN-8s (fcn.py).

`aux=True` adds torchvision's auxiliary FCNHead on 'stage3' (returned as
features['aux_logits'], upsampled like the logits; the task decides whether to use it).
Outputs: logits [B, H, W, num_classes] float32; features: the backbone's maps plus 'head'
(the map before the last 1x1) and 'aux_logits' when aux=True.
"""

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cnnjax.errors import ConfigError
from cnnjax.models.layers import features_at
from cnnjax.models.resnet_stages import conv_and_norm
from cnnjax.ops import upsample

ModuleDef = Any
PAPER_RATES = (6, 12, 18)  # at output stride 16


def aspp_rates(output_stride: int, rates: Sequence[int] = ()) -> tuple[int, ...]:
    """ASPP's atrous rates: `rates` if given, else (6, 12, 18) * 16 / output_stride."""
    if output_stride not in (8, 16):
        raise ConfigError(f"DeepLab v3 output_stride must be 8 or 16, got {output_stride!r}")
    if rates:
        if not all(isinstance(r, int) and r >= 1 for r in rates):
            raise ConfigError(f"ASPP rates must be positive ints, got {rates!r}")
        return tuple(rates)
    return tuple(r * 16 // output_stride for r in PAPER_RATES)


class ConvBNReLU(nn.Module):
    """`conv` (k x k, dilated by `dilation`, padded to keep the size) + `bn` + ReLU.

    conv / norm: partials with bias, dtype and train mode already set (conv_and_norm).
    x: [B, H, W, Cin] -> [B, H, W, features].
    """

    features: int
    kernel: int
    conv: ModuleDef
    norm: ModuleDef
    dilation: int = 1

    @nn.compact
    def __call__(self, x):
        p = self.dilation * (self.kernel - 1) // 2
        k, d = (self.kernel,) * 2, (self.dilation,) * 2
        y = self.conv(self.features, k, padding=((p, p), (p, p)), kernel_dilation=d, name="conv")
        return nn.relu(self.norm(name="bn")(y(x)))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling, torchvision's `deeplabv3.ASPP`.

    Branches `convs_0` (1x1), `convs_1`... (3x3 at each rate), `pooling` (global mean -> 1x1
    -> BN -> ReLU -> bilinear back to the map, i.e. broadcast), concatenated and `project`ed
    by 1x1 + BN + ReLU, then dropout. x: [B, H, W, C] -> [B, H, W, features].
    """

    rates: Sequence[int] = (12, 24, 36)
    features: int = 256
    dropout: float = 0.5
    conv: ModuleDef = nn.Conv
    norm: ModuleDef = nn.BatchNorm
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv, norm = conv_and_norm(self, train)
        branch = functools.partial(ConvBNReLU, self.features, conv=conv, norm=norm)
        ys = [branch(1, name="convs_0")(x)]
        ys += [branch(3, dilation=r, name=f"convs_{i + 1}")(x) for i, r in enumerate(self.rates)]
        pooled = branch(1, name="pooling")(jnp.mean(x, axis=(1, 2), keepdims=True))
        ys.append(upsample.bilinear(pooled, size=x.shape[1:3]))
        y = branch(1, name="project")(jnp.concatenate(ys, axis=-1))
        return nn.Dropout(self.dropout, deterministic=not train)(y)


class DeepLabHead(nn.Module):
    """torchvision's DeepLabHead: `aspp` -> 3x3 `conv` 256 + `bn` + ReLU -> 1x1 `logits`.

    x: [B, h, w, C] -> (logits [B, h, w, num_classes], the 256-channel map before them).
    """

    num_classes: int
    rates: Sequence[int] = (12, 24, 36)
    features: int = 256
    conv: ModuleDef = nn.Conv
    norm: ModuleDef = nn.BatchNorm
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        kw = dict(conv=self.conv, norm=self.norm, dtype=self.dtype)
        y = ASPP(self.rates, self.features, **kw, name="aspp")(x, train)
        conv, norm = conv_and_norm(self, train)
        y = conv(self.features, (3, 3), padding=((1, 1), (1, 1)), name="conv")(y)
        y = nn.relu(norm(name="bn")(y))
        return conv(self.num_classes, (1, 1), use_bias=True, name="logits")(y), y


class FCNHead(nn.Module):
    """torchvision's FCNHead: 3x3 `conv` to C / 4 + `bn` + ReLU + dropout 0.1 + 1x1 `logits`.

    x: [B, h, w, C] -> (logits [B, h, w, num_classes], the C / 4-channel map before them).
    """

    num_classes: int
    dropout: float = 0.1
    conv: ModuleDef = nn.Conv
    norm: ModuleDef = nn.BatchNorm
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv, norm = conv_and_norm(self, train)
        y = conv(x.shape[-1] // 4, (3, 3), padding=((1, 1), (1, 1)), name="conv")(x)
        y = nn.relu(norm(name="bn")(y))
        y = nn.Dropout(self.dropout, deterministic=not train)(y)
        return conv(self.num_classes, (1, 1), use_bias=True, name="logits")(y), y


def dilated_backbone(module, x, train: bool, **kwargs) -> dict:
    """Runs registry backbone `module.backbone` (headless, at module.output_stride, with the
    module's dtype / conv / norm) as submodule 'backbone' -> its features dict."""
    from cnnjax import models  # the registry imports this package

    if module.num_classes < 1:
        raise ConfigError(f"a segmentation model needs num_classes >= 1, got {module.num_classes}")
    net = models.create(
        module.backbone,
        num_classes=0,
        output_stride=module.output_stride,
        dtype=module.dtype,
        conv=module.conv,
        norm=module.norm,
        module_name="backbone",
        **kwargs,
    )
    _, feats = net(x.astype(module.dtype), train=train)
    return dict(feats)


def to_input_size(logits, x):
    """Class scores [B, h, w, K] -> [B, H, W, K] float32 at the size of images x [B, H, W, C]."""
    return upsample.bilinear(logits.astype(jnp.float32), size=x.shape[1:3])


def _aux(module, feats: dict, x, train: bool) -> None:
    """torchvision's aux_classifier: FCNHead on 'stage3' -> feats['aux_logits'] [B, H, W, K]."""
    if module.aux:
        kw = dict(conv=module.conv, norm=module.norm, dtype=module.dtype)
        aux, _ = FCNHead(module.num_classes, **kw, name="aux_classifier")(feats["stage3"], train)
        feats["aux_logits"] = to_input_size(aux, x)


class DeepLabV3(nn.Module):
    """DeepLab v3: dilated registry `backbone` + DeepLabHead (`classifier`) + upsampling."""

    num_classes: int
    backbone: str = "resnet50"
    output_stride: int = 8  # torchvision's; the paper trains at 16 and evaluates at 8
    rates: Sequence[int] = ()  # () = (6, 12, 18) * 16 / output_stride
    multi_grid: Sequence[int] = (1, 1, 1)
    aux: bool = False
    conv: ModuleDef = nn.Conv
    norm: ModuleDef = nn.BatchNorm
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        rates = aspp_rates(self.output_stride, self.rates)
        grid = tuple(self.multi_grid)
        kwargs = {"multi_grid": grid} if any(g != 1 for g in grid) else {}
        feats = dilated_backbone(self, x, train, **kwargs)
        (y,) = features_at(feats, (self.output_stride,))
        kw = dict(conv=self.conv, norm=self.norm, dtype=self.dtype)
        logits, feats["head"] = DeepLabHead(self.num_classes, rates, **kw, name="classifier")(
            y, train
        )
        _aux(self, feats, x, train)
        return to_input_size(logits, x), feats


class FCNResNet(nn.Module):
    """torchvision's FCN: dilated registry `backbone` + FCNHead (`classifier`) + upsampling."""

    num_classes: int
    backbone: str = "resnet50"
    output_stride: int = 8
    aux: bool = False
    conv: ModuleDef = nn.Conv
    norm: ModuleDef = nn.BatchNorm
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        feats = dilated_backbone(self, x, train)
        (y,) = features_at(feats, (self.output_stride,))
        kw = dict(conv=self.conv, norm=self.norm, dtype=self.dtype)
        logits, feats["head"] = FCNHead(self.num_classes, **kw, name="classifier")(y, train)
        _aux(self, feats, x, train)
        return to_input_size(logits, x), feats


MODELS = {"deeplabv3": DeepLabV3, "fcn_resnet": FCNResNet}
