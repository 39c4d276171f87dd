"""GoogLeNet / Inception v1 (Szegedy et al. 2014) in torchvision's layout (BN after every conv).

Every conv is torchvision's `BasicConv2d`: conv (no bias) -> BatchNorm(eps=1e-3) -> ReLU, with
flax names `conv` and `bn`. Module names mirror torchvision's; a Sequential index joins its
parent with `_`: `conv1/conv`, `inception3a/branch2_0/bn`, `inception4e/branch4_1/conv`,
`aux1/conv/conv`, `aux1/fc1`, `fc`. As in torchvision, the "5x5" branch uses a 3x3 kernel, and
max-pools use ceil_mode. There is no `transform_input`: torchvision's released weights run
with it on, i.e. they expect pixels in [0, 1] scaled as (x - 0.5) / 0.5, not mean/std-normalised.

`aux_logits=True` adds the two auxiliary classifiers (after inception4a and 4d). They own
parameters from init on but run only with train=True, where their logits come back in the
features dict as 'aux_logits' = (aux1, aux2), each [B, num_classes] float32; the
classification task adds their losses with weight 0.3 (the paper's) to the main loss.

`num_classes=0` builds the backbone without `fc` (and without aux heads, which need classes):
the outputs are 'pre_logits'.

Features: 'stride2' (conv1, 64 ch), 'stem' (after maxpool1, stride 4, 64 ch), 'stage1' =
'stride4' (conv3, 192), 'stage2' = 'stride8' (inception3b, 480), 'stage3' = 'stride16'
(inception4e, 832), 'stage4' = 'stride32' (inception5b, 1024) and 'pre_logits' [B, 1024].
"""

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cnnjax.errors import ConfigError
from cnnjax.models.layers import has_classifier, require_min_size
from cnnjax.ops.pooling import adaptive_avg_pool, max_pool

ModuleDef = Any
MIN_SIZE = 15  # as torchvision: smaller inputs leave a max-pool without output

# ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj (torchvision's Inception arguments)
INCEPTIONS = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}

_init = nn.initializers.normal(0.01)  # torchvision: trunc_normal(std=0.01, a=-2, b=2)


class BasicConv2d(nn.Module):
    """k x k conv ('same' padding for odd k) -> BN -> act."""

    features: int
    kernel: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable
    strides: int = 1

    @nn.compact
    def __call__(self, x):
        p = (self.kernel - 1) // 2
        k, s = (self.kernel,) * 2, (self.strides,) * 2
        x = self.conv(self.features, k, s, padding=((p, p), (p, p)), name="conv")(x)
        return self.act(self.norm(name="bn")(x))


class Inception(nn.Module):
    """Four parallel branches (1x1; 1x1-3x3; 1x1-3x3; pool-1x1) concatenated on channels."""

    widths: tuple[int, int, int, int, int, int]
    block: ModuleDef  # BasicConv2d with conv/norm/act bound

    @nn.compact
    def __call__(self, x):
        c1, c3r, c3, c5r, c5, cp = self.widths
        b = self.block
        y1 = b(c1, 1, name="branch1")(x)
        y2 = b(c3, 3, name="branch2_1")(b(c3r, 1, name="branch2_0")(x))
        y3 = b(c5, 3, name="branch3_1")(b(c5r, 1, name="branch3_0")(x))
        y4 = b(cp, 1, name="branch4_1")(max_pool(x, 3, 1, padding=1, ceil_mode=True))
        return jnp.concatenate([y1, y2, y3, y4], axis=-1)


class InceptionAux(nn.Module):
    """Auxiliary classifier: adaptive avg-pool 4x4 -> 1x1 conv 128 -> fc 1024 -> dropout -> fc."""

    num_classes: int
    block: ModuleDef
    act: Callable
    dropout_rate: float = 0.7
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        x = self.block(128, 1, name="conv")(adaptive_avg_pool(x, 4))
        x = x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)  # C, H, W order, as PyTorch flattens
        x = self.act(nn.Dense(1024, dtype=self.dtype, kernel_init=_init, name="fc1")(x))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=_init, name="fc2")(x)


class GoogLeNet(nn.Module):
    """Inception v1 on NHWC images (224 px nominal; at least 15 px)."""

    num_classes: int
    aux_logits: bool = False
    dropout_rate: float = 0.2
    aux_dropout_rate: float = 0.7
    act: Callable = nn.relu
    conv: ModuleDef = nn.Conv
    norm: ModuleDef = nn.BatchNorm
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        require_min_size(x, MIN_SIZE, "GoogLeNet")
        if self.aux_logits and not has_classifier(self.num_classes):
            raise ConfigError("GoogLeNet aux_logits=True needs num_classes > 0")
        conv = functools.partial(self.conv, use_bias=False, kernel_init=_init, dtype=self.dtype)
        norm = functools.partial(
            self.norm, use_running_average=not train, momentum=0.9, epsilon=1e-3, dtype=self.dtype
        )
        block = functools.partial(BasicConv2d, conv=conv, norm=norm, act=self.act)
        inception = lambda n: Inception(INCEPTIONS[n], block, name=f"inception{n}")
        # Aux heads must exist after init(train=False), yet run only when training.
        run_aux = self.aux_logits and (train or self.is_initializing())
        aux = functools.partial(
            InceptionAux, self.num_classes, block, self.act, self.aux_dropout_rate, self.dtype
        )
        feats = {}
        feats["stride2"] = x = block(64, 7, strides=2, name="conv1")(x.astype(self.dtype))
        feats["stem"] = x = max_pool(x, 3, 2, ceil_mode=True)
        x = block(64, 1, name="conv2")(x)
        feats["stage1"] = feats["stride4"] = x = block(192, 3, name="conv3")(x)
        x = inception("3a")(max_pool(x, 3, 2, ceil_mode=True))
        feats["stage2"] = feats["stride8"] = x = inception("3b")(x)
        x = inception("4a")(max_pool(x, 3, 2, ceil_mode=True))
        aux_out = [aux(name="aux1")(x, train)] if run_aux else []
        x = inception("4d")(inception("4c")(inception("4b")(x)))
        if run_aux:
            aux_out.append(aux(name="aux2")(x, train))
        feats["stage3"] = feats["stride16"] = x = inception("4e")(x)
        x = inception("5a")(max_pool(x, 2, 2, ceil_mode=True))
        feats["stage4"] = feats["stride32"] = x = inception("5b")(x)
        feats["pre_logits"] = x = jnp.mean(x, axis=(1, 2))
        if not has_classifier(self.num_classes):
            return x, feats
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        logits = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=_init, name="fc")(x)
        if train and aux_out:
            feats["aux_logits"] = tuple(a.astype(jnp.float32) for a in aux_out)
        return logits.astype(jnp.float32), feats


MODELS = {"googlenet": functools.partial(GoogLeNet)}
