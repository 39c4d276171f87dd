"""ResNet v1.5 (He et al. 2015; torchvision's layout) and its plain, shortcut-free twins.

Layer names follow torchvision (`conv1`, `bn1`, `layer1_0`, ..., `fc`) so that weights
convert by name. `shortcut=False` removes every identity and projection shortcut:
the paper's "plain" network of the same depth. `se_ratio > 0` adds a squeeze-excitation
`se` (Hu et al. 2018, named as timm's `layerX_Y.se.fc1/fc2`) on each block's residual branch
after its last BN: `se_resnet50` is SENet's SE-ResNet-50 (ratio 1/16), with the stride on the
3x3 as torchvision/timm rather than on the first 1x1 as in the original Caffe models.
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cnnjax.models.layers import SqueezeExcite

ModuleDef = Any


def _pad(k: int, dilation: int = 1):
    p = dilation * (k - 1) // 2
    return ((p, p), (p, p))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions; output channels = `features`."""

    features: int
    strides: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable
    shortcut: bool = True
    se_ratio: float = 0.0
    expansion = 1

    @nn.compact
    def __call__(self, x):
        y = self.conv(self.features, (3, 3), (self.strides,) * 2, padding=_pad(3), name="conv1")(x)
        y = self.act(self.norm(name="bn1")(y))
        y = self.conv(self.features, (3, 3), padding=_pad(3), name="conv2")(y)
        y = _se(self, self.norm(name="bn2")(y))
        return self.act(y + _shortcut(self, x, y) if self.shortcut else y)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride, as in v1.5), 1x1 expand by 4."""

    features: int
    strides: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable
    shortcut: bool = True
    se_ratio: float = 0.0
    expansion = 4

    @nn.compact
    def __call__(self, x):
        y = self.act(self.norm(name="bn1")(self.conv(self.features, (1, 1), name="conv1")(x)))
        y = self.conv(self.features, (3, 3), (self.strides,) * 2, padding=_pad(3), name="conv2")(y)
        y = self.act(self.norm(name="bn2")(y))
        y = self.conv(self.features * 4, (1, 1), name="conv3")(y)
        y = _se(self, self.norm(name="bn3")(y))
        return self.act(y + _shortcut(self, x, y) if self.shortcut else y)


def _se(block, y):
    """Squeeze-excitation on the residual branch when the block has se_ratio > 0."""
    if not block.se_ratio:
        return y
    return SqueezeExcite(rd_ratio=block.se_ratio, conv=block.conv, name="se")(y)


def _shortcut(block, x, y):
    """Identity, or a strided 1x1 projection + BN when the shape changes."""
    if x.shape == y.shape:
        return x
    proj = block.conv(y.shape[-1], (1, 1), (block.strides,) * 2, name="downsample_conv")(x)
    return block.norm(name="downsample_bn")(proj)


class ResNet(nn.Module):
    """ImageNet ResNet: 7x7/2 stem + 3x3/2 max-pool, four stages, global pool, linear head."""

    num_classes: int
    stage_sizes: Sequence[int]
    block: ModuleDef = BasicBlock
    width: int = 64
    shortcut: bool = True
    se_ratio: float = 0.0
    act: Callable = nn.relu
    conv: ModuleDef = nn.Conv
    norm: ModuleDef = nn.BatchNorm
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv = functools.partial(self.conv, use_bias=False, dtype=self.dtype)
        norm = functools.partial(
            self.norm, use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype
        )
        feats = {}
        x = conv(self.width, (7, 7), (2, 2), padding=_pad(7), name="conv1")(x.astype(self.dtype))
        x = self.act(norm(name="bn1")(x))
        x = nn.max_pool(x, (3, 3), (2, 2), padding=_pad(3))
        feats["stem"] = x
        for i, n in enumerate(self.stage_sizes):
            for j in range(n):
                x = self.block(
                    features=self.width * 2**i,
                    strides=2 if i > 0 and j == 0 else 1,
                    conv=conv,
                    norm=norm,
                    act=self.act,
                    shortcut=self.shortcut,
                    se_ratio=self.se_ratio,
                    name=f"layer{i + 1}_{j}",
                )(x)
            feats[f"stage{i + 1}"] = x
        x = jnp.mean(x, axis=(1, 2))
        feats["pre_logits"] = x
        logits = nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(x)
        return logits.astype(jnp.float32), feats


_DEPTHS = {
    18: ((2, 2, 2, 2), BasicBlock),
    34: ((3, 4, 6, 3), BasicBlock),
    50: ((3, 4, 6, 3), Bottleneck),
    101: ((3, 4, 23, 3), Bottleneck),
    152: ((3, 8, 36, 3), Bottleneck),
}

MODELS = {}
for _depth, (_sizes, _block) in _DEPTHS.items():
    MODELS[f"resnet{_depth}"] = functools.partial(ResNet, stage_sizes=_sizes, block=_block)
    MODELS[f"plain{_depth}"] = functools.partial(
        ResNet, stage_sizes=_sizes, block=_block, shortcut=False
    )
MODELS["se_resnet50"] = functools.partial(
    ResNet, stage_sizes=_DEPTHS[50][0], block=Bottleneck, se_ratio=1 / 16
)
