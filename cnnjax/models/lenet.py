"""LeNet-5 (LeCun et al. 1998): two 5x5 convolutions with 2x2 subsampling, then three dense layers.

Classic layout for 32x32 inputs: conv1 5x5x6 -> pool -> conv2 5x5x16 -> pool -> fc1 120 -> fc2 84
-> fc3 num_classes; 61,706 parameters for 10 classes at 32x32x1 (the paper's sparse C3 connection
table is replaced by a full one, as everyone does). Inputs under 32 px (28x28 MNIST) are
zero-padded inside conv1 up to the paper's 32x32 framing, so every later shape is unchanged.
Not in torchvision; parameter names are `conv1`, `conv2`, `fc1`, `fc2`, `fc3`.

`num_classes=0` builds it without `fc3` (outputs: 'pre_logits').

Features (shapes at 32 px; unpadded 5x5 convs make each map smaller than H / stride):
'stage1' = 'stride1' = act(conv1) [B, 28, 28, 6], 'stage2' = 'stride2' = act(conv2)
[B, 10, 10, 16] (each the last activation before a pool), 'stride4' [B, 5, 5, 16] (the second
pool, flattened into fc1), 'pre_logits' = act(fc2) [B, 84].
"""

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cnnjax.errors import ConfigError
from cnnjax.models.layers import has_classifier

POOLS = ("avg", "max")


class LeNet5(nn.Module):
    """LeNet-5 on NHWC images of any channel count; `act` is tanh (paper) or e.g. nn.relu."""

    num_classes: int
    act: Callable = nn.tanh
    pool: str = "avg"  # 'avg': the paper's 2x2 subsampling; 'max': the modern variant
    conv1_padding: int | None = None  # None: pad inputs under 32 px up to 32
    dtype: Any = jnp.float32

    def _padding(self, h: int, w: int) -> tuple[int, int]:
        if self.conv1_padding is not None:
            return self.conv1_padding, self.conv1_padding
        return max(0, (32 - h) // 2), max(0, (32 - w) // 2)

    def _check(self, x) -> tuple[int, int]:
        if self.pool not in POOLS:
            raise ConfigError(f"LeNet5 pool must be one of {POOLS}, got {self.pool!r}")
        ph, pw = self._padding(x.shape[1], x.shape[2])
        # conv 5 -> pool 2 -> conv 5 -> pool 2 leaves >= 1 pixel only from 16 px on.
        if min(x.shape[1] + 2 * ph, x.shape[2] + 2 * pw) < 16:
            raise ConfigError(
                f"LeNet5 needs images of at least 16x16 px after conv1 padding, got "
                f"{x.shape[1]}x{x.shape[2]} with conv1_padding={self.conv1_padding}"
            )
        return ph, pw

    @nn.compact
    def __call__(self, x, train: bool = False):
        ph, pw = self._check(x)
        pool = nn.avg_pool if self.pool == "avg" else nn.max_pool
        conv = functools.partial(nn.Conv, kernel_size=(5, 5), padding="VALID", dtype=self.dtype)
        dense = functools.partial(nn.Dense, dtype=self.dtype)
        x = jnp.pad(x.astype(self.dtype), ((0, 0), (ph, ph), (pw, pw), (0, 0)))
        feats = {}
        feats["stage1"] = feats["stride1"] = x = self.act(conv(6, name="conv1")(x))
        x = self.act(conv(16, name="conv2")(pool(x, (2, 2), (2, 2))))
        feats["stage2"] = feats["stride2"] = x
        feats["stride4"] = x = pool(x, (2, 2), (2, 2))
        x = x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)  # C, H, W order, as PyTorch flattens
        x = self.act(dense(120, name="fc1")(x))
        feats["pre_logits"] = x = self.act(dense(84, name="fc2")(x))
        if not has_classifier(self.num_classes):
            return x, feats
        logits = dense(self.num_classes, name="fc3")(x)
        return logits.astype(jnp.float32), feats


MODELS = {"lenet5": functools.partial(LeNet5)}
