"""Pre-activation ResNet (He et al. 2016, "Identity Mappings in Deep Residual Networks").

Each residual unit is BN-ReLU-conv ("full pre-activation", Fig. 4e) with a clean identity
path; a projection shortcut is a bare strided 1x1 conv applied to the pre-activated input.
ImageNet layout as in the paper's appendix and fb.resnet.torch's preresnet.lua: a 7x7/2 conv
+ BN-ReLU + 3x3/2 max-pool stem whose activation serves as the first unit's pre-activation
(so `layer1_0` has no `bn1`), and an extra BN-ReLU (`final_bn`) after the last unit, before
global pooling. Not in torchvision; names follow this project's ResNet (`conv1`, `bn1`,
`layerX_Y/{bn1, conv1, bn2, conv2, [bn3, conv3], downsample}`, `final_bn`, `fc`).

`num_classes=0` builds the backbone without `fc` (outputs: 'pre_logits'); `output_stride` 16
or 8 dilates the last stage(s) exactly as ResNet's (resnet_stages.py): the 3x3 of a
bottleneck, both 3x3s of a basic unit.

Features (stage loop and stem shared with ResNet): 'stride2' [B, H/2, W/2, 64] (conv1 +
BN-ReLU), 'stem' [B, H/4, W/4, 64], 'stage1'...'stage4' = 'stride4'...'stride32' (the last
after `final_bn` + ReLU, the map that is pooled; at output_stride 8 or 16 it is 'stride8' /
'stride16'), 'pre_logits' [B, 512 * expansion].
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cnnjax.models.resnet_stages import conv3x3, conv_and_norm, head, stages, stem

ModuleDef = Any


def _preact_and_shortcut(block, x, out_features: int):
    """(input of the residual branch, shortcut): BN-ReLU unless block.preact is False."""
    y = block.act(block.norm(name="bn1")(x)) if block.preact else x
    if x.shape[-1] == out_features and block.strides == 1:
        return y, x
    s = (block.strides, block.strides)
    return y, block.conv(out_features, (1, 1), s, name="downsample")(y)


class PreActBasicBlock(nn.Module):
    """BN-ReLU-3x3 conv, BN-ReLU-3x3 conv, plus shortcut; output channels = `features`."""

    features: int
    strides: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable
    preact: bool = True
    dilation: int = 1
    expansion = 1

    @nn.compact
    def __call__(self, x):
        y, shortcut = _preact_and_shortcut(self, x, self.features)
        y = conv3x3(self.conv, self.features, self.strides, self.dilation, "conv1")(y)
        y = self.act(self.norm(name="bn2")(y))
        y = conv3x3(self.conv, self.features, 1, self.dilation, "conv2")(y)
        return y + shortcut


class PreActBottleneck(nn.Module):
    """BN-ReLU-1x1, BN-ReLU-3x3 (strided), BN-ReLU-1x1 expanding by 4, plus shortcut."""

    features: int
    strides: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable
    preact: bool = True
    dilation: int = 1
    expansion = 4

    @nn.compact
    def __call__(self, x):
        y, shortcut = _preact_and_shortcut(self, x, self.features * 4)
        y = self.conv(self.features, (1, 1), name="conv1")(y)
        y = self.act(self.norm(name="bn2")(y))
        y = conv3x3(self.conv, self.features, self.strides, self.dilation, "conv2")(y)
        y = self.act(self.norm(name="bn3")(y))
        y = self.conv(self.features * 4, (1, 1), name="conv3")(y)
        return y + shortcut


class PreActResNet(nn.Module):
    """ImageNet pre-activation ResNet: stem, four stages of pre-activation units, BN-ReLU, head."""

    num_classes: int
    stage_sizes: Sequence[int]
    block: ModuleDef = PreActBasicBlock
    width: int = 64
    output_stride: int = 32  # 8 or 16: dilate the last stage(s) instead of striding
    act: Callable = nn.relu
    conv: ModuleDef = nn.Conv
    norm: ModuleDef = nn.BatchNorm
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv, norm = conv_and_norm(self, train)
        feats = {}
        x = stem(x.astype(self.dtype), feats, conv=conv, norm=norm, act=self.act, width=self.width)
        block = functools.partial(self.block, conv=conv, norm=norm, act=self.act)
        # The stem's BN-ReLU pre-activates the first unit.
        make_block = lambda i, j: functools.partial(block, preact=(i, j) != (0, 0))
        x, stride = stages(
            x,
            feats,
            make_block,
            self.stage_sizes,
            width=self.width,
            output_stride=self.output_stride,
        )
        x = self.act(norm(name="final_bn")(x))
        feats[f"stage{len(self.stage_sizes)}"] = feats[f"stride{stride}"] = x
        return head(self, x, feats)


_DEPTHS = {
    18: ((2, 2, 2, 2), PreActBasicBlock),
    34: ((3, 4, 6, 3), PreActBasicBlock),
    50: ((3, 4, 6, 3), PreActBottleneck),
    101: ((3, 4, 23, 3), PreActBottleneck),
    152: ((3, 8, 36, 3), PreActBottleneck),
}

MODELS = {
    f"preact_resnet{d}": functools.partial(PreActResNet, stage_sizes=sizes, block=block)
    for d, (sizes, block) in _DEPTHS.items()
}
