"""Pre-activation ResNet (He et al. 2016, "Identity Mappings in Deep Residual Networks").

Each residual unit is BN-ReLU-conv ("full pre-activation", Fig. 4e) with a clean identity
path; a projection shortcut is a bare strided 1x1 conv applied to the pre-activated input.
ImageNet layout as in the paper's appendix and fb.resnet.torch's preresnet.lua: a 7x7/2 conv
+ BN-ReLU + 3x3/2 max-pool stem whose activation serves as the first unit's pre-activation
(so `layer1_0` has no `bn1`), and an extra BN-ReLU (`final_bn`) after the last unit, before
global pooling. Not in torchvision; names follow this project's ResNet (`conv1`, `bn1`,
`layerX_Y/{bn1, conv1, bn2, conv2, [bn3, conv3], downsample}`, `final_bn`, `fc`).

Features: 'stem' [B, H/4, W/4, 64], 'stage1'...'stage4' (the last after `final_bn` + ReLU,
the map that is pooled), 'pre_logits' [B, 512 * expansion].
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

ModuleDef = Any


def _pad(k: int):
    p = (k - 1) // 2
    return ((p, p), (p, p))


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
    expansion = 1

    @nn.compact
    def __call__(self, x):
        y, shortcut = _preact_and_shortcut(self, x, self.features)
        s = (self.strides, self.strides)
        y = self.conv(self.features, (3, 3), s, padding=_pad(3), name="conv1")(y)
        y = self.act(self.norm(name="bn2")(y))
        y = self.conv(self.features, (3, 3), padding=_pad(3), name="conv2")(y)
        return y + shortcut


class PreActBottleneck(nn.Module):
    """BN-ReLU-1x1, BN-ReLU-3x3 (strided), BN-ReLU-1x1 expanding by 4, plus shortcut."""

    features: int
    strides: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable
    preact: bool = True
    expansion = 4

    @nn.compact
    def __call__(self, x):
        y, shortcut = _preact_and_shortcut(self, x, self.features * 4)
        y = self.conv(self.features, (1, 1), name="conv1")(y)
        y = self.act(self.norm(name="bn2")(y))
        s = (self.strides, self.strides)
        y = self.conv(self.features, (3, 3), s, padding=_pad(3), name="conv2")(y)
        y = self.act(self.norm(name="bn3")(y))
        y = self.conv(self.features * 4, (1, 1), name="conv3")(y)
        return y + shortcut


class PreActResNet(nn.Module):
    """ImageNet pre-activation ResNet: stem, four stages of pre-activation units, BN-ReLU, head."""

    num_classes: int
    stage_sizes: Sequence[int]
    block: ModuleDef = PreActBasicBlock
    width: int = 64
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
                    preact=(i, j) != (0, 0),  # the stem's BN-ReLU pre-activates the first unit
                    name=f"layer{i + 1}_{j}",
                )(x)
            feats[f"stage{i + 1}"] = x
        x = self.act(norm(name="final_bn")(x))
        feats[f"stage{len(self.stage_sizes)}"] = x
        x = jnp.mean(x, axis=(1, 2))
        feats["pre_logits"] = x
        logits = nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(x)
        return logits.astype(jnp.float32), feats


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
