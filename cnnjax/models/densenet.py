"""DenseNet-BC (Huang et al. 2016) in torchvision's layout: DenseNet-121/161/169/201.

A 7x7/2 conv + 3x3/2 max-pool stem, four dense blocks (each layer: BN-ReLU-1x1 conv to
bn_size * growth_rate, BN-ReLU-3x3 conv to growth_rate, concatenated onto its input), transition
layers (BN-ReLU-1x1 conv halving the channels, 2x2 avg-pool) between blocks, a final BN + ReLU,
global average pooling and a linear classifier.

Naming rule (shared by this project's torchvision families): a child of a torchvision
nn.Sequential joins its parent with `_`; every other dot becomes a flax module boundary `/`.
So `features.denseblock1.denselayer1.conv1` -> `features_denseblock1/denselayer1/conv1`,
`features.transition1.norm` -> `features_transition1/norm`, `features.norm5` ->
`features_norm5`, `classifier` -> `classifier`.

`num_classes=0` builds the backbone without `classifier` (outputs: 'pre_logits').

Features: 'stride2' (relu(norm0(conv0)), before pool0), 'stem' (after pool0, stride 4, 64 ch),
'stage1'...'stage3' = 'stride4'...'stride16' (dense block outputs before each transition, as
timm's features_only), 'stage4' = 'stride32' (relu(norm5(block4)); at 224 px [B, 7, 7, 1024]
for DenseNet-121) and 'pre_logits' [B, C].
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cnnjax.models.layers import has_classifier, require_min_size

ModuleDef = Any

_conv_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")  # torch kaiming_normal_


class DenseLayer(nn.Module):
    """BN-act-1x1 conv (bn_size * growth) -> BN-act-3x3 conv (growth): the new feature maps."""

    growth_rate: int
    bn_size: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable
    drop_rate: float = 0.0
    deterministic: bool = True

    @nn.compact
    def __call__(self, x):
        y = self.conv(self.bn_size * self.growth_rate, (1, 1), name="conv1")(
            self.act(self.norm(name="norm1")(x))
        )
        y = self.conv(self.growth_rate, (3, 3), padding=((1, 1), (1, 1)), name="conv2")(
            self.act(self.norm(name="norm2")(y))
        )
        if self.drop_rate > 0:
            y = nn.Dropout(self.drop_rate, deterministic=self.deterministic)(y)
        return y


class DenseBlock(nn.Module):
    """`num_layers` DenseLayers, each appending growth_rate channels: C -> C + n * growth."""

    num_layers: int
    layer: ModuleDef  # DenseLayer with everything but the name bound

    @nn.compact
    def __call__(self, x):
        for i in range(self.num_layers):
            x = jnp.concatenate([x, self.layer(name=f"denselayer{i + 1}")(x)], axis=-1)
        return x


class Transition(nn.Module):
    """BN-act-1x1 conv to `features` channels, then a 2x2 average pool."""

    features: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable

    @nn.compact
    def __call__(self, x):
        x = self.conv(self.features, (1, 1), name="conv")(self.act(self.norm(name="norm")(x)))
        return nn.avg_pool(x, (2, 2), (2, 2))


class DenseNet(nn.Module):
    """DenseNet-BC, compression 0.5, on NHWC images (224 px nominal; >= 29 px with 4 blocks)."""

    num_classes: int
    block_config: Sequence[int] = (6, 12, 24, 16)
    growth_rate: int = 32
    num_init_features: int = 64
    bn_size: int = 4
    drop_rate: float = 0.0
    memory_efficient: bool = False  # recompute dense layers in the backward pass (nn.remat)
    act: Callable = nn.relu
    conv: ModuleDef = nn.Conv
    norm: ModuleDef = nn.BatchNorm
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        # The stem divides by 4 (rounding up) and each transition halves: the last block needs 1 px.
        min_size = 4 * (2 ** (len(self.block_config) - 1) - 1) + 1
        require_min_size(x, min_size, f"DenseNet with {len(self.block_config)} blocks")
        conv = functools.partial(
            self.conv, use_bias=False, kernel_init=_conv_init, dtype=self.dtype
        )
        norm = functools.partial(
            self.norm, use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype
        )
        layer = functools.partial(
            nn.remat(DenseLayer) if self.memory_efficient else DenseLayer,
            growth_rate=self.growth_rate,
            bn_size=self.bn_size,
            conv=conv,
            norm=norm,
            act=self.act,
            drop_rate=self.drop_rate,
            deterministic=not train,
        )
        feats = {}
        x = conv(
            self.num_init_features, (7, 7), (2, 2), padding=((3, 3), (3, 3)), name="features_conv0"
        )(x.astype(self.dtype))
        feats["stride2"] = x = self.act(norm(name="features_norm0")(x))
        feats["stem"] = x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        last = len(self.block_config)
        for i, n in enumerate(self.block_config, start=1):
            x = DenseBlock(n, layer, name=f"features_denseblock{i}")(x)
            if i == last:
                x = self.act(norm(name="features_norm5")(x))
            feats[f"stage{i}"] = feats[f"stride{2 ** (i + 1)}"] = x
            if i < last:  # compression 0.5
                name = f"features_transition{i}"
                x = Transition(x.shape[-1] // 2, conv, norm, self.act, name=name)(x)
        feats["pre_logits"] = x = jnp.mean(x, axis=(1, 2))
        if not has_classifier(self.num_classes):
            return x, feats
        logits = nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(x)
        return logits.astype(jnp.float32), feats


MODELS = {
    "densenet121": functools.partial(DenseNet, block_config=(6, 12, 24, 16)),
    "densenet161": functools.partial(
        DenseNet, block_config=(6, 12, 36, 24), growth_rate=48, num_init_features=96
    ),
    "densenet169": functools.partial(DenseNet, block_config=(6, 12, 32, 32)),
    "densenet201": functools.partial(DenseNet, block_config=(6, 12, 48, 32)),
}
