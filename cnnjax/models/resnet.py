"""ResNet v1.5 (He et al. 2015; torchvision's layout) and its plain, shortcut-free twins.

Layer names follow torchvision (`conv1`, `bn1`, `layer1_0`, ..., `fc`) so that weights
convert by name. `shortcut=False` removes every identity and projection shortcut:
the paper's "plain" network of the same depth. `se_ratio > 0` adds a squeeze-excitation
`se` (Hu et al. 2018, named as timm's `layerX_Y.se.fc1/fc2`) on each block's residual branch
after its last BN: `se_resnet50` is SENet's SE-ResNet-50 (ratio 1/16), with the stride on the
3x3 as torchvision/timm rather than on the first 1x1 as in the original Caffe models.

`num_classes=0` builds the backbone without `fc`: the outputs are then 'pre_logits'.
`output_stride` 16 or 8 trades the strides of the last stage(s) for dilation, as torchvision's
`replace_stride_with_dilation` (DeepLab's dilated ResNet; resnet_stages.py), with the same
parameters; `multi_grid` (DeepLab v3's unit rates, e.g. (1, 2, 4)) multiplies the dilations
of the last stage's blocks. A Bottleneck dilates its 3x3; a BasicBlock (ResNet-18/34), which
torchvision refuses to dilate, dilates both of its 3x3 convolutions.

Features (at output_stride 32; shapes at 224 px for ResNet-50): 'stride2' [B, 112, 112, 64]
(after conv1/bn1/ReLU), 'stem' [B, 56, 56, 64] (after the max-pool), 'stage1'...'stage4' =
'stride4'...'stride32' (the stage outputs: 56x56x256, 28x28x512, 14x14x1024, 7x7x2048) and
'pre_logits' [B, 2048]. At output_stride 8 'stage3' and 'stage4' stay at 28x28 and 'stride8'
is 'stage4' (no 'stride16'/'stride32'); at 16, 'stride16' is 'stage4'.
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cnnjax.models.layers import SqueezeExcite
from cnnjax.models.resnet_stages import conv3x3, conv_and_norm, head, stages, stem

ModuleDef = Any


class BasicBlock(nn.Module):
    """Two 3x3 convolutions (both dilated by `dilation`); output channels = `features`."""

    features: int
    strides: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable
    shortcut: bool = True
    se_ratio: float = 0.0
    dilation: int = 1
    expansion = 1

    @nn.compact
    def __call__(self, x):
        d = self.dilation
        y = conv3x3(self.conv, self.features, self.strides, d, "conv1")(x)
        y = self.act(self.norm(name="bn1")(y))
        y = conv3x3(self.conv, self.features, 1, d, "conv2")(y)
        y = _se(self, self.norm(name="bn2")(y))
        return self.act(y + _shortcut(self, x, y) if self.shortcut else y)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride and the dilation, as in v1.5), 1x1 expand by 4."""

    features: int
    strides: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable
    shortcut: bool = True
    se_ratio: float = 0.0
    dilation: int = 1
    expansion = 4

    @nn.compact
    def __call__(self, x):
        y = self.act(self.norm(name="bn1")(self.conv(self.features, (1, 1), name="conv1")(x)))
        y = conv3x3(self.conv, self.features, self.strides, self.dilation, "conv2")(y)
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
    """Identity, or a (strided) 1x1 projection + BN when the shape changes."""
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
    output_stride: int = 32  # 8 or 16: dilate the last stage(s) instead of striding
    multi_grid: Sequence[int] = ()  # DeepLab v3's unit rates of the last stage; () = all 1
    act: Callable = nn.relu
    conv: ModuleDef = nn.Conv
    norm: ModuleDef = nn.BatchNorm
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv, norm = conv_and_norm(self, train)
        feats = {}
        x = stem(x.astype(self.dtype), feats, conv=conv, norm=norm, act=self.act, width=self.width)
        block = functools.partial(
            self.block,
            conv=conv,
            norm=norm,
            act=self.act,
            shortcut=self.shortcut,
            se_ratio=self.se_ratio,
        )
        x, _ = stages(
            x,
            feats,
            lambda i, j: block,
            self.stage_sizes,
            width=self.width,
            output_stride=self.output_stride,
            multi_grid=self.multi_grid,
        )
        return head(self, x, feats)


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
