"""The ResNet paper's CIFAR-10 networks (He et al. 2015, section 4.2), depth 6n+2.

A 3x3 stem with 16 filters, three stages of n basic blocks at 16/32/64 filters on
32/16/8 pixel maps, global average pooling and a linear head. Shortcut option A is a
parameter-free identity that subsamples with stride 2 and zero-pads the new channels;
option B projects with a strided 1x1 convolution + BN when the shape changes.
`shortcut=None` gives the plain twin (same layers, no shortcuts). `num_classes=0` builds the
backbone without `fc` (outputs: 'pre_logits').

Features (shapes at 32 px, width 16): 'stem' [B, 32, 32, 16] (conv1 + BN + ReLU), 'stage1'
= 'stride1' [B, 32, 32, 16], 'stage2' = 'stride2' [B, 16, 16, 32], 'stage3' = 'stride4'
[B, 8, 8, 64] (each stage's output, the last map at its stride), 'pre_logits' [B, 64].
"""

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cnnjax.models.layers import has_classifier

ModuleDef = Any
_PAD = ((1, 1), (1, 1))


class CifarBlock(nn.Module):
    features: int
    strides: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable
    shortcut: str | None = "A"

    @nn.compact
    def __call__(self, x):
        s = (self.strides, self.strides)
        y = self.act(
            self.norm(name="bn1")(self.conv(self.features, (3, 3), s, _PAD, name="conv1")(x))
        )
        y = self.norm(name="bn2")(self.conv(self.features, (3, 3), (1, 1), _PAD, name="conv2")(y))
        if self.shortcut is None:
            return self.act(y)
        if x.shape == y.shape:
            return self.act(y + x)
        if self.shortcut == "A":
            sub = x[:, :: self.strides, :: self.strides, :]
            extra = y.shape[-1] - x.shape[-1]
            sc = jnp.pad(sub, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
        else:
            sc = self.conv(self.features, (1, 1), s, name="downsample_conv")(x)
            sc = self.norm(name="downsample_bn")(sc)
        return self.act(y + sc)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs; `depth` in {20, 32, 44, 56, 110, 1202, ...}."""

    num_classes: int
    depth: int = 20
    width: int = 16
    shortcut: str | None = "A"  # "A" | "B" | None (plain)
    act: Callable = nn.relu
    conv: ModuleDef = nn.Conv
    norm: ModuleDef = nn.BatchNorm
    dtype: Any = jnp.float32

    def setup_check(self):
        if (self.depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {self.depth}")
        if self.shortcut not in ("A", "B", None):
            raise ValueError(f"shortcut must be 'A', 'B' or None, got {self.shortcut!r}")

    @nn.compact
    def __call__(self, x, train: bool = False):
        self.setup_check()
        n = (self.depth - 2) // 6
        conv = functools.partial(self.conv, use_bias=False, dtype=self.dtype)
        norm = functools.partial(
            self.norm, use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype
        )
        x = conv(self.width, (3, 3), (1, 1), _PAD, name="conv1")(x.astype(self.dtype))
        x = self.act(norm(name="bn1")(x))
        feats = {"stem": x}
        for i in range(3):
            for j in range(n):
                x = CifarBlock(
                    self.width * 2**i,
                    2 if i > 0 and j == 0 else 1,
                    conv,
                    norm,
                    self.act,
                    self.shortcut,
                    name=f"layer{i + 1}_{j}",
                )(x)
            feats[f"stage{i + 1}"] = feats[f"stride{2**i}"] = x
        feats["pre_logits"] = x = jnp.mean(x, axis=(1, 2))
        if not has_classifier(self.num_classes):
            return x, feats
        logits = nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(x)
        return logits.astype(jnp.float32), feats


MODELS = {}
for _depth in (20, 32, 44, 56, 110, 1202):
    MODELS[f"resnet{_depth}_cifar"] = functools.partial(CifarResNet, depth=_depth)
    if _depth != 1202:
        MODELS[f"plain{_depth}_cifar"] = functools.partial(CifarResNet, depth=_depth, shortcut=None)
