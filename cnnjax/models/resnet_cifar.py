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

from cnnjax.errors import ConfigError
from cnnjax.models.layers import has_classifier

ModuleDef = Any
_PAD = ((1, 1), (1, 1))


class CifarBlock(nn.Module):
    """`kernels` convolutions (each k x k, BN, ReLU between them; the first strided) and the
    shortcut. (3, 3) is the paper's basic block. `bottleneck` makes it 1x1 -> 3x3 -> 1x1 with
    `features` inner channels and 4 * `features` outputs (He et al. 2016's CIFAR
    bottleneck). `use_norm=False` drops BatchNorm (the convolutions get biases)."""

    features: int
    strides: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable
    shortcut: str | None = "A"
    kernels: tuple[int, ...] = (3, 3)
    bottleneck: bool = False
    use_norm: bool = True

    @nn.compact
    def __call__(self, x):
        if self.bottleneck:
            layers = ((self.features, 1), (self.features, 3), (4 * self.features, 1))
        else:
            layers = tuple((self.features, k) for k in self.kernels)
        y = x
        for i, (width, k) in enumerate(layers, start=1):
            s = (self.strides, self.strides) if i == 1 else (1, 1)
            pad = ((k // 2, k // 2), (k // 2, k // 2))
            y = self.conv(width, (k, k), s, pad, use_bias=not self.use_norm, name=f"conv{i}")(y)
            if self.use_norm:
                y = self.norm(name=f"bn{i}")(y)
            if i < len(layers):
                y = self.act(y)
        if self.shortcut is None:
            return self.act(y)
        if x.shape == y.shape:
            return self.act(y + x)
        if self.shortcut == "A":
            sub = x[:, :: self.strides, :: self.strides, :]
            extra = y.shape[-1] - x.shape[-1]
            sc = jnp.pad(sub, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
        else:
            sc = self.conv(y.shape[-1], (1, 1), (self.strides,) * 2, use_bias=not self.use_norm,
                           name="downsample_conv")(x)  # fmt: skip
            if self.use_norm:
                sc = self.norm(name="downsample_bn")(sc)
        return self.act(y + sc)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs; `depth` in {20, 32, 44, 56, 110, 1202, ...}.

    Ablation options (the defaults are the paper's network): `kernels`, the kernel sizes of
    the convolutions in each block ((5,): one 5x5 per block, the receptive field of the
    basic block's two 3x3 in one layer); `bottleneck=True`, 1x1 -> 3x3 -> 1x1 blocks with 4x
    wider outputs, depth 9n+2 (ResNet-164's form); `batch_norm=False`, no BatchNorm anywhere
    (biases instead). `depth` fixes n, the blocks per stage: (depth - 2) / 6 for blocks of
    two convolutions, (depth - 2) / 9 for bottlenecks; a block of other `kernels` keeps n
    and has len(kernels) convolutions.
    """

    num_classes: int
    depth: int = 20
    width: int = 16
    shortcut: str | None = "A"  # "A" | "B" | None (plain)
    act: Callable = nn.relu
    kernels: tuple[int, ...] = (3, 3)
    bottleneck: bool = False
    batch_norm: bool = True
    conv: ModuleDef = nn.Conv
    norm: ModuleDef = nn.BatchNorm
    dtype: Any = jnp.float32

    def setup_check(self) -> int:
        per_block = 9 if self.bottleneck else 6
        if (self.depth - 2) % per_block or self.depth < 2 + per_block:
            kind = "9n+2 for bottleneck blocks" if self.bottleneck else "6n+2"
            raise ConfigError(f"CIFAR ResNet depth must be {kind} (n >= 1), got {self.depth}")
        if self.shortcut not in ("A", "B", None):
            raise ConfigError(f"shortcut must be 'A', 'B' or None, got {self.shortcut!r}")
        kernels = tuple(self.kernels)
        if not kernels or any(not isinstance(k, int) or k < 1 or k % 2 == 0 for k in kernels):
            raise ConfigError(
                f"CIFAR ResNet kernels must be a non-empty tuple of odd sizes >= 1, e.g. (3, 3) "
                f"or (5,); got {self.kernels!r}"
            )
        if self.bottleneck and kernels != (3, 3):
            raise ConfigError(
                f"CIFAR ResNet: bottleneck blocks are 1x1 -> 3x3 -> 1x1; kernels={self.kernels!r} "
                "cannot be combined with bottleneck=True"
            )
        return (self.depth - 2) // per_block

    @nn.compact
    def __call__(self, x, train: bool = False):
        n = self.setup_check()
        conv = functools.partial(self.conv, use_bias=not self.batch_norm, dtype=self.dtype)
        norm = functools.partial(
            self.norm, use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype
        )
        x = conv(self.width, (3, 3), (1, 1), _PAD, name="conv1")(x.astype(self.dtype))
        x = self.act(norm(name="bn1")(x) if self.batch_norm else x)
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
                    tuple(self.kernels),
                    self.bottleneck,
                    self.batch_norm,
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
