"""EfficientNet B0-B7 (Tan & Le 2019) in torchvision's layout.

MBConv blocks (1x1 expand, kxk depthwise, squeeze-excitation with in_channels // 4 units,
linear 1x1 project) with SiLU; a block whose input and output shapes match adds its input
through stochastic depth (whole examples dropped with probability 0.2 * block_id / 16 for
B0, rescaled by 1/(1 - p) in training, identity at eval: torchvision's StochasticDepth "row"
mode, drawn from the 'dropout' rng). Width and depth scale as torchvision's
`_efficientnet_conf`. BN eps and momentum mirror torchvision per variant: B0-B4 use
BatchNorm2d defaults (eps 1e-5; the TF originals use 1e-3, pass bn_eps=1e-3 for that), B5-B7
eps 1e-3 and torch momentum 0.01 (flax 0.99). Initialisation follows torchvision (He-normal
fan-out convs, U(+-1/sqrt(num_classes)) classifier).

Names follow torchvision under this project's rule: a numeric index joins its parent with
'_', a named child is a '/' scope (`features.1.0.block.1.fc1` -> `features_1_0/block_1/fc1`,
`features.0.0` -> `features_0_0`, `classifier.1` -> `classifier_1`).

`num_classes=0` builds the backbone without dropout + `classifier_1` (outputs: 'pre_logits').

Features ('stem', 'stage1'...'stage4' by output stride, see layers.feature_name, each also as
'stride2'...'stride32', the last block at that stride): for B0 at 224 px 'stem' 112x112x16
(`features_1`), 'stage1' 56x56x24, 'stage2' 28x28x40, 'stage3' 14x14x112, 'stage4' 7x7x1280
(`features_8`); 'pre_logits' [B, 1280].
"""

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnjax.errors import ConfigError
from cnnjax.models.layers import (
    SqueezeExcite,
    conv_norm_act,
    has_classifier,
    make_divisible,
    record_map,
)

ModuleDef = Any

# torchvision's inverted_residual_setting for B0 (paper Table 1): (expand ratio, kernel,
# first stride, in channels, out channels, layers), before width and depth scaling.
STAGES = (
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)

_he_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _classifier_init(key, shape, dtype=jnp.float32):
    """torchvision's U(-r, r) with r = 1 / sqrt(out_features) for the classifier kernel."""
    r = 1.0 / math.sqrt(shape[-1])
    return jax.random.uniform(key, shape, dtype, -r, r)


class MBConv(nn.Module):
    """MBConv with SE: x [B, H, W, Cin] -> [B, H/strides, W/strides, features]."""

    features: int
    expand_ratio: float
    kernel: int
    strides: int
    sd_prob: float
    conv: ModuleDef
    norm: ModuleDef
    act: Callable

    @nn.compact
    def __call__(self, x, train: bool = False):
        cin = x.shape[-1]
        expanded = make_divisible(cin * self.expand_ratio)
        layer = functools.partial(conv_norm_act, conv=self.conv, norm=self.norm)
        y, i = x, 0
        if expanded != cin:
            y, i = layer(y, expanded, 1, act=self.act, name="block_0"), 1
        y = layer(y, expanded, self.kernel, act=self.act, strides=self.strides, groups=expanded,
                  name=f"block_{i}")  # fmt: skip
        se = SqueezeExcite(max(1, cin // 4), act=self.act, conv=self.conv, name=f"block_{i + 1}")
        y = layer(se(y), self.features, 1, act=None, name=f"block_{i + 2}")
        if self.strides != 1 or cin != self.features:
            return y
        # Stochastic depth: Dropout broadcast over H, W, C drops whole examples.
        y = nn.Dropout(
            self.sd_prob, broadcast_dims=(1, 2, 3), deterministic=not train, name="stochastic_depth"
        )(y)
        return x + y


class EfficientNet(nn.Module):
    """torchvision EfficientNet: stem `features_0`, stages `features_1..7`, head `features_8`."""

    num_classes: int
    inverted_residual_setting: Sequence[tuple[float, int, int, int, int, int]] = STAGES
    width_mult: float = 1.0
    depth_mult: float = 1.0
    dropout: float = 0.2
    stochastic_depth_prob: float = 0.2
    bn_eps: float = 1e-5
    bn_momentum: float = 0.9
    act: Callable = nn.silu
    conv: ModuleDef = nn.Conv
    norm: ModuleDef = nn.BatchNorm
    dtype: Any = jnp.float32

    def _check(self):
        if not (self.width_mult > 0 and self.depth_mult > 0):
            raise ConfigError(
                f"EfficientNet width_mult and depth_mult must be > 0, got "
                f"{self.width_mult} and {self.depth_mult}"
            )
        if not 0.0 <= self.stochastic_depth_prob <= 1.0:
            raise ConfigError(
                f"stochastic_depth_prob must be in [0, 1], got {self.stochastic_depth_prob}"
            )

    @nn.compact
    def __call__(self, x, train: bool = False):
        self._check()
        conv = functools.partial(
            self.conv, use_bias=False, kernel_init=_he_fan_out, dtype=self.dtype
        )
        norm = functools.partial(
            self.norm,
            use_running_average=not train,
            momentum=self.bn_momentum,
            epsilon=self.bn_eps,
            dtype=self.dtype,
        )
        width = lambda c: make_divisible(c * self.width_mult)
        setting = self.inverted_residual_setting
        depths = [math.ceil(n * self.depth_mult) for *_, n in setting]
        layer = functools.partial(conv_norm_act, conv=conv, norm=norm, act=self.act)
        x = layer(x.astype(self.dtype), width(setting[0][3]), 3, strides=2, name="features_0")
        feats, stride, block_id = {}, 2, 0
        for s, ((t, k, first_stride, _, cout, _), n) in enumerate(
            zip(setting, depths, strict=True), start=1
        ):
            for j in range(n):
                strides = first_stride if j == 0 else 1
                sd = self.stochastic_depth_prob * block_id / sum(depths)
                x = MBConv(width(cout), t, k, strides, sd, conv, norm, self.act,
                           name=f"features_{s}_{j}")(x, train)  # fmt: skip
                stride *= strides
                record_map(feats, x, stride)
                block_id += 1
        x = layer(x, 4 * x.shape[-1], 1, name=f"features_{len(setting) + 1}")
        record_map(feats, x, stride)
        feats["pre_logits"] = x = jnp.mean(x, axis=(1, 2))
        if not has_classifier(self.num_classes):
            return x, feats
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        logits = nn.Dense(
            self.num_classes, kernel_init=_classifier_init, dtype=self.dtype, name="classifier_1"
        )(x)
        return logits.astype(jnp.float32), feats


# name: (width_mult, depth_mult, dropout, BN overrides) as in torchvision's builders.
_VARIANTS = {
    "b0": (1.0, 1.0, 0.2, {}),
    "b1": (1.0, 1.1, 0.2, {}),
    "b2": (1.1, 1.2, 0.3, {}),
    "b3": (1.2, 1.4, 0.3, {}),
    "b4": (1.4, 1.8, 0.4, {}),
    "b5": (1.6, 2.2, 0.4, {"bn_eps": 1e-3, "bn_momentum": 0.99}),
    "b6": (1.8, 2.6, 0.5, {"bn_eps": 1e-3, "bn_momentum": 0.99}),
    "b7": (2.0, 3.1, 0.5, {"bn_eps": 1e-3, "bn_momentum": 0.99}),
}

MODELS = {
    f"efficientnet_{v}": functools.partial(
        EfficientNet, width_mult=w, depth_mult=d, dropout=p, **bn
    )
    for v, (w, d, p, bn) in _VARIANTS.items()
}
