"""SqueezeNet 1.0 and 1.1 (Iandola et al. 2016) in torchvision's layout.

A strided stem conv, fire modules (1x1 squeeze, then parallel 1x1 and 3x3 expands concatenated)
between ceil-mode 3x3/2 max-pools, and a fully convolutional classifier: dropout, 1x1 conv to
num_classes, ReLU, global average pool. 1.1 has a 3x3 stem and pools earlier (2.4x fewer MACs).

Naming rule: a child of a torchvision nn.Sequential joins its parent with `_`, every other dot
becomes `/`: `features.0` -> `features_0`, `features.3.expand3x3` -> `features_3/expand3x3`,
`classifier.1` (the final conv) -> `classifier_1`. Initialisation follows torchvision
(He-uniform convs, N(0, 0.01) final conv, zero biases).

`num_classes=0` drops the conv classifier (dropout, `classifier_1`): outputs are 'pre_logits'.

Features (unpadded stem and ceil-mode pools make each map a little smaller than H / stride):
'stride2' (the stem conv's ReLU, before the first pool; 109x109 at 224 px for 1.0), 'stem'
(after the first pool, stride 4), 'stage1' = 'stride4' and 'stage2' = 'stride8' (the last fire
before the 2nd and 3rd pools), 'stage3' = 'stride16' (last fire; at 224 px [B, 13, 13, 512]),
'pre_logits' [B, 512] (global mean of 'stage3').
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cnnjax.errors import ConfigError
from cnnjax.models.layers import has_classifier, require_min_size
from cnnjax.ops.pooling import max_pool

ModuleDef = Any
M = "M"  # a 3x3/2 ceil-mode max-pool in a layout

MIN_SIZE = {"1_0": 21, "1_1": 17}  # as torchvision: smaller inputs leave a pool without output

# (stem width, stem kernel, layout after features_2): fire modules as (squeeze, expand) widths.
# fmt: off
LAYOUTS = {
    "1_0": (96, 7, ((16, 64), (16, 64), (32, 128), M, (32, 128), (48, 192), (48, 192),
                    (64, 256), M, (64, 256))),
    "1_1": (64, 3, ((16, 64), (16, 64), M, (32, 128), (32, 128), M, (48, 192), (48, 192),
                    (64, 256), (64, 256))),
}
# fmt: on

_conv_init = nn.initializers.variance_scaling(2.0, "fan_in", "uniform")  # torch kaiming_uniform_


class Fire(nn.Module):
    """squeeze 1x1 -> act -> concat(act(expand1x1), act(expand3x3)): 2 * expand channels."""

    squeeze: int
    expand: int
    conv: ModuleDef
    act: Callable

    @nn.compact
    def __call__(self, x):
        x = self.act(self.conv(self.squeeze, (1, 1), name="squeeze")(x))
        e1 = self.act(self.conv(self.expand, (1, 1), name="expand1x1")(x))
        e3 = self.act(self.conv(self.expand, (3, 3), padding=((1, 1), (1, 1)), name="expand3x3")(x))
        return jnp.concatenate([e1, e3], axis=-1)


class SqueezeNet(nn.Module):
    """SqueezeNet on NHWC images (224 px nominal; at least 21 px for 1.0, 17 px for 1.1)."""

    num_classes: int
    version: str = "1_0"
    dropout_rate: float = 0.5
    act: Callable = nn.relu
    conv: ModuleDef = nn.Conv
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.version not in LAYOUTS:
            raise ConfigError(
                f"SqueezeNet version must be one of {sorted(LAYOUTS)}, got {self.version!r}"
            )
        require_min_size(x, MIN_SIZE[self.version], f"SqueezeNet {self.version}")
        width, k, layout = LAYOUTS[self.version]
        conv = functools.partial(self.conv, kernel_init=_conv_init, dtype=self.dtype)
        x = conv(width, (k, k), (2, 2), padding="VALID", name="features_0")(x.astype(self.dtype))
        feats = {"stride2": self.act(x)}
        feats["stem"] = x = max_pool(feats["stride2"], 3, 2, ceil_mode=True)
        x = self._fires(x, layout, conv, feats)
        feats["pre_logits"] = jnp.mean(x, axis=(1, 2))
        if not has_classifier(self.num_classes):
            return feats["pre_logits"], feats
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        final = conv(
            self.num_classes, (1, 1), kernel_init=nn.initializers.normal(0.01), name="classifier_1"
        )
        logits = jnp.mean(self.act(final(x)), axis=(1, 2))
        return logits.astype(jnp.float32), feats

    def _fires(self, x, layout: Sequence, conv, feats: dict):
        stage = 1
        for index, item in enumerate(layout, start=3):
            if item == M:
                feats[f"stage{stage}"] = feats[f"stride{2 ** (stage + 1)}"] = x
                x, stage = max_pool(x, 3, 2, ceil_mode=True), stage + 1
            else:
                x = Fire(*item, conv, self.act, name=f"features_{index}")(x)
        feats[f"stage{stage}"] = feats[f"stride{2 ** (stage + 1)}"] = x
        return x


MODELS = {f"squeezenet{v}": functools.partial(SqueezeNet, version=v) for v in LAYOUTS}
