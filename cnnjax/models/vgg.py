"""VGG (Simonyan & Zisserman 2014), configurations A/B/D/E = VGG-11/13/16/19, with or without BN.

torchvision's layout: 3x3 convolutions (with bias, also before BN) and 2x2 max-pools in one
`features` Sequential, adaptive average pooling to 7x7, and a 4096-4096 dropout-MLP
`classifier`. Names are torchvision's Sequential indices joined by `_`: with BN a conv at index
i is `features_i` and its BatchNorm `features_{i+1}`; the classifier is `classifier_0`,
`classifier_3`, `classifier_6`. The flatten before `classifier_0` is in PyTorch's C, H, W
order, so a torchvision Linear weight converts with a plain transpose. Initialisation follows
torchvision (He-normal fan-out convs, N(0, 0.01) linears, zero biases).

`num_classes=0` drops the whole classifier (`classifier_0/3/6`, 4096-4096-classes): the
backbone is torchvision's `features`, ending with pool5, and 'pre_logits' is pool5's global
average [B, 512].

Features: 'stage1'...'stage5' = 'stride1'...'stride16', the last ReLU output before each
max-pool (at 224 px 'stage5' is [B, 14, 14, 512]); 'pool1'...'pool5' the max-pool outputs
(strides 2...32; FCN fuses pool3 and pool4), 'stride32' = 'pool5' [B, 7, 7, 512] at 224 px, the
end of `features`; 'pre_logits' [B, classifier_width=4096], the input of `classifier_6`
(headless: [B, 512]). Any image of at least 32x32 px works (the 7x7 pool then repeats pixels).
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cnnjax.models.layers import has_classifier, require_min_size
from cnnjax.ops.pooling import adaptive_avg_pool

ModuleDef = Any
M = "M"  # a 2x2 max-pool in a configuration
MIN_SIZE = 32

CONFIGS = {
    11: (64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M),
    13: (64, 64, M, 128, 128, M, 256, 256, M, 512, 512, M, 512, 512, M),
    16: (64, 64, M, 128, 128, M, 256, 256, 256, M, 512, 512, 512, M, 512, 512, 512, M),
    19: (
        64,
        64,
        M,
        128,
        128,
        M,
        256,
        256,
        256,
        256,
        M,
        512,
        512,
        512,
        512,
        M,
        512,
        512,
        512,
        512,
        M,
    ),
}

_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
_dense_init = nn.initializers.normal(0.01)


class VGG(nn.Module):
    """VGG on NHWC images; `cfg` lists conv widths with 'M' for each max-pool."""

    num_classes: int
    cfg: Sequence[int | str] = CONFIGS[16]
    batch_norm: bool = False
    dropout_rate: float = 0.5
    classifier_width: int = 4096  # hidden units of the two dropout-MLP layers
    act: Callable = nn.relu
    conv: ModuleDef = nn.Conv
    norm: ModuleDef = nn.BatchNorm
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        require_min_size(x, MIN_SIZE, "VGG")
        feats = {}
        x = self._features(x.astype(self.dtype), train, feats)
        if not has_classifier(self.num_classes):
            feats["pre_logits"] = x = jnp.mean(x, axis=(1, 2))
            return x, feats
        x = adaptive_avg_pool(x, 7)
        x = x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)  # C, H, W order, as PyTorch flattens
        dense = functools.partial(nn.Dense, dtype=self.dtype, kernel_init=_dense_init)
        for i in (0, 3):
            x = self.act(dense(self.classifier_width, name=f"classifier_{i}")(x))
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        feats["pre_logits"] = x
        logits = dense(self.num_classes, name="classifier_6")(x)
        return logits.astype(jnp.float32), feats

    def _features(self, x, train: bool, feats: dict):
        conv = functools.partial(
            self.conv,
            kernel_size=(3, 3),
            padding=((1, 1), (1, 1)),
            dtype=self.dtype,
            kernel_init=_conv_init,
        )
        norm = functools.partial(
            self.norm, use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype
        )
        index, stage = 0, 1
        for v in self.cfg:
            if v == M:
                feats[f"stage{stage}"] = feats[f"stride{2 ** (stage - 1)}"] = x
                feats[f"pool{stage}"] = x = nn.max_pool(x, (2, 2), (2, 2))
                index, stage = index + 1, stage + 1
                continue
            x = conv(v, name=f"features_{index}")(x)
            if self.batch_norm:
                x = norm(name=f"features_{index + 1}")(x)
            x = self.act(x)
            index += 3 if self.batch_norm else 2
        feats[f"stride{2 ** (stage - 1)}"] = x  # pool5: the last map of `features`
        return x


MODELS = {}
for _depth, _cfg in CONFIGS.items():
    MODELS[f"vgg{_depth}"] = functools.partial(VGG, cfg=_cfg)
    MODELS[f"vgg{_depth}_bn"] = functools.partial(VGG, cfg=_cfg, batch_norm=True)
