"""AlexNet (Krizhevsky et al. 2012) in torchvision's single-tower layout (64-192-384-256-256).

Names follow torchvision's `features` / `classifier` Sequentials with the index joined by `_`:
`features_0`, `features_3`, `features_6`, `features_8`, `features_10`, `classifier_1`,
`classifier_4`, `classifier_6`. The flatten before `classifier_1` is in PyTorch's C, H, W order,
so a torchvision Linear weight converts with a plain transpose. `lrn=True` adds the paper's
local response normalisation (k=2, n=5, alpha=1e-4, beta=0.75) after the first two ReLUs; it has
no parameters and shifts no names.

`num_classes=0` drops the whole classifier (`classifier_1/4/6`): the backbone is torchvision's
`features`, ending with the third max-pool, and 'pre_logits' is that map's global average
[B, 256].

Features (shapes at 224 px; unpadded pools make each map a little smaller than H / stride):
'stage1' = 'stride4' [B, 55, 55, 64], 'stage2' = 'stride8' [B, 27, 27, 192], 'stage3' =
'stride16' [B, 13, 13, 256] (the last activation before each max-pool), 'stride32'
[B, 6, 6, 256] (after the last max-pool, the end of `features`); 'pre_logits' [B,
classifier_width=4096], the input of `classifier_6` (headless: [B, 256]). Inputs need at least
63x63 px (as in torchvision).
"""

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cnnjax.models.layers import has_classifier, require_min_size
from cnnjax.ops.pooling import adaptive_avg_pool

ModuleDef = Any
MIN_SIZE = 63


def local_response_norm(x, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0):
    """The AlexNet paper's LRN: x / (k + alpha * sum of x^2 over `size` channels)^beta.

    x: [..., C] -> same shape and dtype. The window for channel c is [c - size // 2,
    c + (size - 1) // 2], clipped at the ends. Unlike torch.nn.LocalResponseNorm, alpha is not
    divided by `size` (the paper's formula).
    """
    c = x.shape[-1]
    sq = jnp.pad(jnp.square(x), [(0, 0)] * (x.ndim - 1) + [(size // 2, (size - 1) // 2)])
    window = sum(sq[..., i : i + c] for i in range(size))
    return x / (k + alpha * window) ** beta


class AlexNet(nn.Module):
    """features (5 convs, 3 max-pools) -> adaptive avg-pool 6x6 -> dropout-MLP classifier."""

    num_classes: int
    lrn: bool = False
    dropout_rate: float = 0.5
    classifier_width: int = 4096  # hidden units of the two dropout-MLP layers
    act: Callable = nn.relu
    conv: ModuleDef = nn.Conv
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        require_min_size(x, MIN_SIZE, "AlexNet")
        conv = functools.partial(self.conv, dtype=self.dtype)
        norm = local_response_norm if self.lrn else lambda y: y
        pool = functools.partial(nn.max_pool, window_shape=(3, 3), strides=(2, 2))
        x = x.astype(self.dtype)
        feats = {}
        x = conv(64, (11, 11), (4, 4), padding=((2, 2), (2, 2)), name="features_0")(x)
        feats["stage1"] = feats["stride4"] = x = norm(self.act(x))
        x = conv(192, (5, 5), padding=((2, 2), (2, 2)), name="features_3")(pool(x))
        feats["stage2"] = feats["stride8"] = x = norm(self.act(x))
        x = pool(x)
        for i, width in ((6, 384), (8, 256), (10, 256)):
            x = self.act(conv(width, (3, 3), padding=((1, 1), (1, 1)), name=f"features_{i}")(x))
        feats["stage3"] = feats["stride16"] = x
        feats["stride32"] = x = pool(x)
        if not has_classifier(self.num_classes):
            feats["pre_logits"] = x = jnp.mean(x, axis=(1, 2))
            return x, feats
        x = adaptive_avg_pool(x, 6)
        x = x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)  # C, H, W order, as PyTorch flattens
        dense = functools.partial(nn.Dense, dtype=self.dtype)
        for i in (1, 4):
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
            x = self.act(dense(self.classifier_width, name=f"classifier_{i}")(x))
        feats["pre_logits"] = x
        logits = dense(self.num_classes, name="classifier_6")(x)
        return logits.astype(jnp.float32), feats


MODELS = {"alexnet": functools.partial(AlexNet)}
