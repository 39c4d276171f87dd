"""ShuffleNet V2 (Ma et al. 2018) in torchvision's layout, x0.5 / x1.0 / x1.5 / x2.0.

A unit splits channels in half (stride 1) or feeds both branches the whole input (stride 2),
runs 1x1-BN-ReLU, 3x3 depthwise-BN, 1x1-BN-ReLU on branch 2 (and 3x3 depthwise-BN,
1x1-BN-ReLU on branch 1 when strided), concatenates and shuffles the channels of the two
halves (`channel_shuffle`). BN eps 1e-5; convolutions have no bias.

Names follow torchvision under this project's rule: a numeric index joins its parent with
'_', a named child is a '/' scope: `conv1_0`, `conv1_1`, `stage2_0/branch1_0`,
`stage2_0/branch2_3` (the Sequential index, ReLUs counted), ..., `conv5_0`, `conv5_1`, `fc`.

`num_classes=0` builds the backbone without `fc` (outputs: 'pre_logits').

Features ('stem', 'stage1'...'stage4' by output stride, see layers.feature_name, each also as
'stride2'...'stride32'): at 224 px 'stem' 112x112x24 (`conv1`), 'stage1' 56x56x24 (max-pool),
'stage2' 28x28 and 'stage3' 14x14 (torchvision's stage2/stage3 outputs), 'stage4' 7x7x1024
(after `conv5`, the map that is pooled); 'pre_logits' [B, 1024].
"""

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cnnjax.errors import ConfigError
from cnnjax.models.layers import has_classifier, record_map

ModuleDef = Any


def channel_shuffle(x, groups: int):
    """[B, H, W, C] -> [B, H, W, C]; out channel i * groups + g = in channel g * C // groups + i."""
    b, h, w, c = x.shape
    if c % groups:
        raise ConfigError(f"channel_shuffle: {c} channels do not split into {groups} groups")
    return x.reshape(b, h, w, groups, c // groups).swapaxes(3, 4).reshape(b, h, w, c)


class ShuffleUnit(nn.Module):
    """torchvision's shufflenetv2.InvertedResidual; x [B, H, W, Cin] -> [B, H/s, W/s, features]."""

    features: int
    strides: int
    conv: ModuleDef
    norm: ModuleDef

    @nn.compact
    def __call__(self, x):
        half = self.features // 2
        s = (self.strides, self.strides)
        pad = ((1, 1), (1, 1))
        if self.strides == 1:
            if x.shape[-1] != 2 * half:
                raise ConfigError(
                    f"a stride-1 ShuffleNet unit needs {2 * half} input channels, got {x.shape[-1]}"
                )
            keep, x2 = jnp.split(x, 2, axis=-1)
        else:
            cin = x.shape[-1]
            keep = self.conv(cin, (3, 3), s, pad, feature_group_count=cin, name="branch1_0")(x)
            keep = self.conv(half, (1, 1), name="branch1_2")(self.norm(name="branch1_1")(keep))
            keep = nn.relu(self.norm(name="branch1_3")(keep))
            x2 = x
        y = nn.relu(self.norm(name="branch2_1")(self.conv(half, (1, 1), name="branch2_0")(x2)))
        y = self.conv(half, (3, 3), s, pad, feature_group_count=half, name="branch2_3")(y)
        y = self.conv(half, (1, 1), name="branch2_5")(self.norm(name="branch2_4")(y))
        y = nn.relu(self.norm(name="branch2_6")(y))
        return channel_shuffle(jnp.concatenate([keep, y], axis=-1), 2)


class ShuffleNetV2(nn.Module):
    """`conv1` 3x3/2, 3x3/2 max-pool, stage2..4 of `stages_repeats` units, `conv5` 1x1, `fc`."""

    num_classes: int
    stages_repeats: Sequence[int] = (4, 8, 4)
    stages_out_channels: Sequence[int] = (24, 116, 232, 464, 1024)
    conv: ModuleDef = nn.Conv
    norm: ModuleDef = nn.BatchNorm
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        if len(self.stages_repeats) != 3 or len(self.stages_out_channels) != 5:
            raise ConfigError(
                "ShuffleNetV2 needs 3 stages_repeats and 5 stages_out_channels, got "
                f"{tuple(self.stages_repeats)} and {tuple(self.stages_out_channels)}"
            )
        conv = functools.partial(self.conv, use_bias=False, dtype=self.dtype)
        norm = functools.partial(
            self.norm, use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype
        )
        x = conv(self.stages_out_channels[0], (3, 3), (2, 2), ((1, 1), (1, 1)), name="conv1_0")(
            x.astype(self.dtype)
        )
        x = nn.relu(norm(name="conv1_1")(x))
        feats = {}
        record_map(feats, x, 2)
        x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        stride = 4
        record_map(feats, x, stride)
        for i, (n, width) in enumerate(
            zip(self.stages_repeats, self.stages_out_channels[1:4], strict=True)
        ):
            for j in range(n):
                x = ShuffleUnit(width, 2 if j == 0 else 1, conv, norm, name=f"stage{i + 2}_{j}")(x)
            stride *= 2
            record_map(feats, x, stride)
        x = conv(self.stages_out_channels[-1], (1, 1), name="conv5_0")(x)
        x = nn.relu(norm(name="conv5_1")(x))
        record_map(feats, x, stride)
        feats["pre_logits"] = x = jnp.mean(x, axis=(1, 2))
        if not has_classifier(self.num_classes):
            return x, feats
        logits = nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(x)
        return logits.astype(jnp.float32), feats


_WIDTHS = {
    "x0_5": (24, 48, 96, 192, 1024),
    "x1_0": (24, 116, 232, 464, 1024),
    "x1_5": (24, 176, 352, 704, 1024),
    "x2_0": (24, 244, 488, 976, 2048),
}

MODELS = {
    f"shufflenet_v2_{k}": functools.partial(ShuffleNetV2, stages_out_channels=w)
    for k, w in _WIDTHS.items()
}
