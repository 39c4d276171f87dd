"""MobileNet v1 (Howard et al. 2017) and v2 (Sandler et al. 2018): depthwise-separable nets.

MobileNetV1 follows Keras' `keras.applications.MobileNet` (4,231,976 trainable parameters at
alpha 1.0 with 1000 classes) and its layer names, used verbatim as flat flax names: `conv1`,
`conv1_bn`, then for block i = 1..13 `conv_dw_{i}`, `conv_dw_{i}_bn`, `conv_pw_{i}`,
`conv_pw_{i}_bn`, and the 1x1-conv classifier `conv_preds`. Convolutions have no bias, BN uses
Keras' eps 1e-3, activations are ReLU6; a strided depthwise conv pads (0, 1) on each spatial
axis ('valid' after ZeroPadding2D), `conv1` pads 'SAME'. `alpha` scales every width.

MobileNetV2 follows torchvision (3,504,872 parameters), its initialisation (He-normal fan-out
convs, N(0, 0.01) classifier) and its names under this project's rule: a numeric index joins
its parent with '_', a named child is a '/' scope (`features.2.conv.1.0` ->
`features_2/conv_1_0`, `classifier.1` -> `classifier_1`). BN eps 1e-5.

`num_classes=0` builds either without its classifier (v1: dropout + `conv_preds`, v2: dropout +
`classifier_1`); the outputs are then 'pre_logits'.

Features ('stem', 'stage1'...'stage4' by output stride, see layers.feature_name, each also as
'stride2'...'stride32', the last block at that stride): at 224 px 'stem' 112x112 (v1:
`conv_pw_1`, 64 ch; v2: `features_1`, 16 ch), 'stage1' 56x56, 'stage2' 28x28, 'stage3' 14x14,
'stage4' 7x7x1024 (v1) / 7x7x1280 (v2: `features_18`); 'pre_logits' [B, 1024] / [B, 1280].
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp

from cnnjax.errors import ConfigError
from cnnjax.models.layers import conv_norm_act, has_classifier, make_divisible, record_map

ModuleDef = Any

# (pointwise width, stride) of MobileNetV1's 13 depthwise-separable blocks.
V1_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)) + ((512, 1),) * 5
V1_BLOCKS += ((1024, 2), (1024, 1))
# torchvision's inverted_residual_setting: (expansion t, width c, repeats n, first stride s).
V2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1))
V2_STAGES += ((6, 160, 3, 2), (6, 320, 1, 1))

_he_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _check_width(name: str, value: float):
    if not value > 0:
        raise ConfigError(f"MobileNet {name} must be > 0, got {value}")


class MobileNetV1(nn.Module):
    """Keras MobileNet: 3x3/2 conv, 13 depthwise-separable blocks, global pool, 1x1 conv head."""

    # train.materialize='auto' leaves the depthwise family without the CPU recompute barrier:
    # MobileNet-V2 measured 7% slower with it, and 11% slower with the shifted depthwise
    # convolutions (BENCHMARKS.md, "CPU: the recompute barrier", "CPU: depthwise convolutions").
    RECOMPUTE_BARRIER: ClassVar[bool] = False

    num_classes: int
    alpha: float = 1.0
    dropout: float = 1e-3
    act: Callable = nn.relu6
    conv: ModuleDef = nn.Conv
    norm: ModuleDef = nn.BatchNorm
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        _check_width("alpha", self.alpha)
        conv = functools.partial(self.conv, use_bias=False, dtype=self.dtype)
        norm = functools.partial(
            self.norm, use_running_average=not train, momentum=0.9, epsilon=1e-3, dtype=self.dtype
        )
        x = conv(int(32 * self.alpha), (3, 3), (2, 2), padding="SAME", name="conv1")(
            x.astype(self.dtype)
        )
        x = self.act(norm(name="conv1_bn")(x))
        feats, stride = {}, 2
        for i, (width, s) in enumerate(V1_BLOCKS, start=1):
            cin = x.shape[-1]
            pad = ((0, 1), (0, 1)) if s == 2 else ((1, 1), (1, 1))
            x = conv(
                cin, (3, 3), (s, s), padding=pad, feature_group_count=cin, name=f"conv_dw_{i}"
            )(x)
            x = self.act(norm(name=f"conv_dw_{i}_bn")(x))
            x = conv(int(width * self.alpha), (1, 1), name=f"conv_pw_{i}")(x)
            x = self.act(norm(name=f"conv_pw_{i}_bn")(x))
            stride *= s
            record_map(feats, x, stride)
        x = jnp.mean(x, axis=(1, 2), keepdims=True)
        feats["pre_logits"] = x[:, 0, 0, :]
        if not has_classifier(self.num_classes):
            return feats["pre_logits"], feats
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        logits = nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, name="conv_preds")(x)
        return logits[:, 0, 0, :].astype(jnp.float32), feats


class InvertedResidual(nn.Module):
    """[1x1 expand-BN-ReLU6], 3x3 depthwise-BN-ReLU6, linear 1x1 project-BN; + x if shapes match."""

    features: int
    strides: int
    expand_ratio: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable

    @nn.compact
    def __call__(self, x):
        cin = x.shape[-1]
        hidden = int(round(cin * self.expand_ratio))
        layer = functools.partial(conv_norm_act, conv=self.conv, norm=self.norm, act=self.act)
        y, i = x, 0
        if self.expand_ratio != 1:
            y, i = layer(y, hidden, 1, name="conv_0"), 1
        y = layer(y, hidden, 3, strides=self.strides, groups=hidden, name=f"conv_{i}")
        y = self.conv(self.features, (1, 1), name=f"conv_{i + 1}")(y)
        y = self.norm(name=f"conv_{i + 2}")(y)
        return x + y if self.strides == 1 and cin == self.features else y


class MobileNetV2(nn.Module):
    """torchvision MobileNetV2: `features_0`...`features_18`, dropout + Linear `classifier_1`."""

    # train.materialize='auto' leaves this family without the CPU recompute barrier: measured
    # 7% slower with it, on every convolution or on all but the depthwise ones, and 11% slower
    # with the shifted depthwise convolutions (BENCHMARKS.md, "CPU: the recompute barrier",
    # "CPU: depthwise convolutions").
    RECOMPUTE_BARRIER: ClassVar[bool] = False

    num_classes: int
    inverted_residual_setting: Sequence[tuple[int, int, int, int]] = V2_STAGES
    width_mult: float = 1.0
    dropout: float = 0.2
    act: Callable = nn.relu6
    conv: ModuleDef = nn.Conv
    norm: ModuleDef = nn.BatchNorm
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        _check_width("width_mult", self.width_mult)
        conv = functools.partial(
            self.conv, use_bias=False, kernel_init=_he_fan_out, dtype=self.dtype
        )
        norm = functools.partial(
            self.norm, use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype
        )
        layer = functools.partial(conv_norm_act, conv=conv, norm=norm, act=self.act)
        x = layer(x.astype(self.dtype), make_divisible(32 * self.width_mult), 3, strides=2,
                  name="features_0")  # fmt: skip
        feats, stride, index = {}, 2, 1
        for t, c, n, s in self.inverted_residual_setting:
            for j in range(n):
                x = InvertedResidual(
                    make_divisible(c * self.width_mult),
                    s if j == 0 else 1,
                    t,
                    conv,
                    norm,
                    self.act,
                    name=f"features_{index}",
                )(x)
                stride *= s if j == 0 else 1
                record_map(feats, x, stride)
                index += 1
        last = make_divisible(1280 * max(1.0, self.width_mult))
        x = layer(x, last, 1, name=f"features_{index}")
        record_map(feats, x, stride)
        feats["pre_logits"] = x = jnp.mean(x, axis=(1, 2))
        if not has_classifier(self.num_classes):
            return x, feats
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        logits = nn.Dense(
            self.num_classes,
            kernel_init=nn.initializers.normal(0.01),
            dtype=self.dtype,
            name="classifier_1",
        )(x)
        return logits.astype(jnp.float32), feats


MODELS = {"mobilenet_v1": MobileNetV1, "mobilenet_v2": MobileNetV2}
