"""SSD (Liu et al. 2016, "SSD: Single Shot MultiBox Detector"): class scores and box offsets
predicted by a 3x3 convolution on each of several feature maps, one set per default box of
every cell, and the default boxes themselves (the loss and the decoding are in
cnnjax/losses/ssd.py and cnnjax/tasks/ssd.py).

The paper's network is VGG-16 read at conv4_3 (stride 8) and fc7 (stride 16), then four
extra blocks (a 1x1 convolution to half the width, then a 3x3 one, stride 2 or unpadded)
adding 10x10, 5x5, 3x3 and 1x1 maps at 300 px. Here the backbone is a registry network
chosen by name and read at `feature_strides`; `extras` lists the extra blocks as (width,
stride, padding) of their 3x3 convolution (the 1x1 before it has width // 2), with
BatchNorm after each convolution unless `norm` is None (the paper's, which has none).
SSD300 on a ResNet is `feature_strides=(8, 16, 32)` with extras ((256, 2, 1), (256, 1, 0),
(256, 1, 0)): maps 38, 19, 10, 5, 3, 1.

Default boxes (`default_boxes`, the paper's section 2.2): map k of m has scale
s_k = s_min + (s_max - s_min)(k - 1)/(m - 1); every cell (i, j) of an f_h x f_w map holds,
centred at ((i + 0.5)/f_h, (j + 0.5)/f_w), a box of side s_k, one of side
s'_k = sqrt(s_k s_{k+1}) (s_{m+1} continues the rule, as Caffe SSD's max sizes do), and
for each aspect ratio a of the map two boxes of width s_k sqrt(a), height s_k / sqrt(a) and
the transpose: 2 + 2 len(ratios) boxes per cell, in torchvision's `DefaultBoxGenerator` order.

Outputs: {'logits': [B, A, K + 1] (class 0 is background), 'deltas': [B, A, 4] (dy, dx, dh,
dw) against the default boxes}, float32, A = sum_k f_h f_w (2 + 2 len(ratios_k)), rows
ordered map by map, cells row-major, then the cell's boxes: `default_boxes`' order.
Features: 'map0'... (the maps the heads read, finest first; their static shapes give the
default boxes) and 'head' (the last one).
"""

import functools
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from cnnjax.errors import ConfigError
from cnnjax.models.detection.common import backbone_maps

ModuleDef = Any


def ratios_per_map(aspect_ratios: Sequence, num_maps: int) -> tuple[tuple[float, ...], ...]:
    """The aspect ratios of each map: `aspect_ratios` is one tuple of ratios (> 0, each also
    used inverted) shared by every map, or one such tuple per map. ConfigError otherwise."""
    rows = tuple(aspect_ratios)
    if all(isinstance(r, int | float) for r in rows):
        rows = (rows,) * num_maps
    if len(rows) != num_maps or not all(isinstance(r, Sequence) for r in rows):
        raise ConfigError(
            f"SSD aspect_ratios must be one tuple of ratios or one per map ({num_maps} maps), "
            f"got {aspect_ratios!r}"
        )
    out = tuple(tuple(float(a) for a in r) for r in rows)
    if any(a <= 0 for r in out for a in r):
        raise ConfigError(f"SSD aspect ratios must be > 0, got {aspect_ratios!r}")
    return out


def boxes_per_cell(aspect_ratios: Sequence, num_maps: int) -> tuple[int, ...]:
    """2 + 2 * len(ratios) default boxes per cell of each map."""
    return tuple(2 + 2 * len(r) for r in ratios_per_map(aspect_ratios, num_maps))


def box_scales(num_maps: int, s_min: float, s_max: float) -> tuple[float, ...]:
    """The paper's s_1 ... s_m and one more, s_{m+1}, by the same linear rule (m + 1 floats);
    with one map, (s_min, s_max)."""
    if not 0 < s_min <= s_max:
        raise ConfigError(f"SSD scales need 0 < s_min <= s_max, got {s_min}, {s_max}")
    if num_maps == 1:
        return (s_min, s_max)
    step = (s_max - s_min) / (num_maps - 1)
    return tuple(s_min + step * k for k in range(num_maps + 1))


def default_boxes(
    map_sizes: Sequence[tuple[int, int]],
    s_min: float = 0.2,
    s_max: float = 0.9,
    aspect_ratios: Sequence = (2.0, 3.0),
    scales: Sequence[float] | None = None,
) -> np.ndarray:
    """SSD's default boxes of maps of `map_sizes` ((f_h, f_w) each, finest first).

    aspect_ratios: as `ratios_per_map`; scales: m + 1 explicit scales instead of the linear
    rule from s_min, s_max (as torchvision's `scales`). Returns [A, 4] float32 normalised
    (y1, x1, y2, x2) (not clipped to the image; see the module docstring for the order).
    """
    m = len(map_sizes)
    ratios = ratios_per_map(aspect_ratios, m)
    s = tuple(scales) if scales is not None else box_scales(m, s_min, s_max)
    if len(s) != m + 1:
        raise ConfigError(f"SSD needs {m + 1} scales for {m} maps, got {len(s)}")
    out = []
    for (fh, fw), sk, sk1, rs in zip(map_sizes, s[:-1], s[1:], ratios, strict=True):
        wh = [(sk, sk), (math.sqrt(sk * sk1),) * 2]
        for a in rs:
            wh += [(sk * math.sqrt(a), sk / math.sqrt(a)), (sk / math.sqrt(a), sk * math.sqrt(a))]
        half = np.asarray(wh, np.float64)[None, :, ::-1] / 2  # [1, n, (h/2, w/2)]
        cy, cx = np.meshgrid((np.arange(fh) + 0.5) / fh, (np.arange(fw) + 0.5) / fw, indexing="ij")
        centre = np.stack([cy.ravel(), cx.ravel()], axis=-1)[:, None, :]
        out.append(np.concatenate([centre - half, centre + half], axis=-1).reshape(-1, 4))
    return np.concatenate(out).astype(np.float32)


class SSD(nn.Module):
    """SSD on registry `backbone`: `extra{i}_conv{1,2}` (+ `_bn`), `cls_head{k}`, `box_head{k}`."""

    num_classes: int  # object classes, without the background
    backbone: str = "resnet18"
    feature_strides: Sequence[int] = (4, 8, 16, 32)
    extras: Sequence[tuple[int, int, int]] = ((128, 2, 1),)  # (width, stride, padding)
    aspect_ratios: Sequence = (2.0, 3.0)
    conv: ModuleDef = nn.Conv
    norm: ModuleDef | None = nn.BatchNorm
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        maps = list(backbone_maps(self, x, train, tuple(self.feature_strides)))
        conv = functools.partial(self.conv, use_bias=self.norm is None, dtype=self.dtype)
        y = maps[-1]
        for i, extra in enumerate(self.extras, start=1):
            if len(extra) != 3 or min(extra) < 0 or extra[0] < 2 or extra[1] < 1:
                raise ConfigError(f"SSD extras are (width >= 2, stride >= 1, padding), got {extra}")
            width, stride, pad = extra
            for j, (w, k, s, p) in enumerate(((width // 2, 1, 1, 0), (width, 3, stride, pad)), 1):
                y = conv(w, (k, k), (s, s), padding=((p, p), (p, p)), name=f"extra{i}_conv{j}")(y)
                if self.norm is not None:
                    y = self.norm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                                  dtype=self.dtype, name=f"extra{i}_bn{j}")(y)  # fmt: skip
                y = nn.relu(y)
            maps.append(y)
        feats = {f"map{k}": m for k, m in enumerate(maps)}
        feats["head"] = maps[-1]
        logits, deltas = [], []
        k1 = self.num_classes + 1
        head = functools.partial(self.conv, kernel_size=(3, 3), padding=((1, 1), (1, 1)),
                                 dtype=self.dtype)  # fmt: skip
        per_cell = boxes_per_cell(self.aspect_ratios, len(maps))
        for k, (m, n) in enumerate(zip(maps, per_cell, strict=True)):
            logits.append(head(n * k1, name=f"cls_head{k}")(m).reshape(m.shape[0], -1, k1))
            deltas.append(head(n * 4, name=f"box_head{k}")(m).reshape(m.shape[0], -1, 4))
        out = {
            "logits": jnp.concatenate(logits, axis=1).astype(jnp.float32),
            "deltas": jnp.concatenate(deltas, axis=1).astype(jnp.float32),
        }
        return out, feats


MODELS = {"ssd": SSD}
