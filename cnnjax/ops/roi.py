"""Pooling a fixed-size feature per region: RoI max pooling (Fast R-CNN), RoIAlign (Mask /
Faster R-CNN) and spatial pyramid pooling (SPPNet), with torchvision.ops semantics.

One image per call (`jax.vmap` at the call site): feature maps are channels-last [H, W, C];
boxes are [R, 4] (y1, x1, y2, x2) in pixels of the network input (see cnnjax/ops/boxes.py) and
`spatial_scale` = 1 / stride maps them onto the feature map. Outputs are [R, out_h, out_w, C]
in the feature's dtype. No gradient flows into the boxes (as in torchvision, whose kernels have
none): proposals are treated as constants.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax.ops.boxes import _check_boxes
from cnnjax.ops.pooling import adaptive_bins


def _pair(v, what: str) -> tuple[int, int]:
    pair = (v, v) if isinstance(v, int) else tuple(v)
    if len(pair) != 2 or not all(isinstance(p, int) and not isinstance(p, bool) for p in pair):
        raise ValueError(f"{what} must be a positive int or a pair of them, got {v!r}")
    if min(pair) < 1:
        raise ValueError(f"{what} must be a positive int or a pair of them, got {v!r}")
    return pair


def _check(feature, boxes, spatial_scale, fn: str):
    if feature.ndim != 3 or min(feature.shape) < 1:
        raise ValueError(f"{fn}: feature must have shape [H, W, C], got {feature.shape}")
    _check_boxes(boxes, f"{fn}: boxes")
    if boxes.ndim != 2:
        raise ValueError(f"{fn}: boxes must have shape [R, 4], got {boxes.shape}")
    if not spatial_scale > 0:
        raise ValueError(f"{fn} spatial_scale must be > 0, got {spatial_scale!r}")
    return jax.lax.stop_gradient(boxes).astype(jnp.float32) * spatial_scale


# --- RoIAlign -------------------------------------------------------------------------------


def _taps(coords, size: int):
    """Bilinear taps along one axis: coords [R, S] -> (lo, hi [R, S] int32, w_lo, w_hi [R, S]).

    torchvision's rule: a sample outside [-1, size] reads 0; otherwise it is clamped to
    [0, size - 1] and interpolated between floor and floor + 1 (the last row repeats).
    """
    inside = (coords >= -1.0) & (coords <= size)
    c = jnp.clip(coords, 0.0, size - 1)
    lo = jnp.floor(c).astype(jnp.int32)
    frac = c - lo
    return (
        lo,
        jnp.minimum(lo + 1, size - 1),
        jnp.where(inside, 1 - frac, 0),
        jnp.where(inside, frac, 0),
    )


def _samples(start, length, bins: int, ratio: int):
    """Sample positions [R, bins * ratio]: start + p * bin + (i + 0.5) * bin / ratio for bin p and
    sample i (torchvision's order of operations)."""
    size = (length / bins)[:, None, None]
    p = jnp.arange(bins, dtype=jnp.float32)[:, None]
    i = jnp.arange(ratio, dtype=jnp.float32)[None, :]
    return (start[:, None, None] + p * size + (i + 0.5) * size / ratio).reshape(len(start), -1)


def roi_align(
    feature,
    boxes,
    output_size: int | Sequence[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = 2,
    aligned: bool = True,
):
    """torchvision.ops.roi_align for one channels-last map.

    feature: [H, W, C] float; boxes: [R, 4] (y1, x1, y2, x2) input pixels; output_size: int or
    (out_h, out_w); spatial_scale: feature cells per input pixel (1 / stride); sampling_ratio:
    static int >= 1, a ratio x ratio grid of bilinear samples averaged per bin (torchvision's
    adaptive choice for ratio <= 0 would make shapes depend on the boxes); aligned: shift the
    box by -0.5 cell so that sample points sit on pixel centres (torchvision's aligned=True;
    False is the original Mask R-CNN rule, which also widens boxes to at least one cell).
    Returns [R, out_h, out_w, C] in feature.dtype. The gradient reaches the feature only.
    """
    out_h, out_w = _pair(output_size, "roi_align output_size")
    if not isinstance(sampling_ratio, int) or sampling_ratio < 1:
        raise ValueError(f"roi_align sampling_ratio must be an int >= 1, got {sampling_ratio!r}")
    b = _check(feature, boxes, spatial_scale, "roi_align") - (0.5 if aligned else 0.0)
    height, width = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    if not aligned:
        height, width = jnp.maximum(height, 1.0), jnp.maximum(width, 1.0)
    s = sampling_ratio
    y_lo, y_hi, wy_lo, wy_hi = _taps(_samples(b[:, 0], height, out_h, s), feature.shape[0])
    x_lo, x_hi, wx_lo, wx_hi = _taps(_samples(b[:, 1], width, out_w, s), feature.shape[1])
    value = 0.0
    for yi, wy in ((y_lo, wy_lo), (y_hi, wy_hi)):
        for xi, wx in ((x_lo, wx_lo), (x_hi, wx_hi)):
            taps = feature[yi[:, :, None], xi[:, None, :]]  # [R, Sy, Sx, C]
            value = value + (wy[:, :, None] * wx[:, None, :])[..., None] * taps
    r, c = boxes.shape[0], feature.shape[-1]
    return value.reshape(r, out_h, s, out_w, s, c).mean(axis=(2, 4)).astype(feature.dtype)


# --- max pooling over bins ------------------------------------------------------------------


def _bin_max(feature, rows, cols):
    """Max of feature [H, W, C] over bins given by masks rows [R, P, H] and cols [R, Q, W]
    -> [R, P, Q, C], 0 in empty bins. Each bin must be one contiguous run of cells (as the
    RoI bins are). Columns first, then rows: the masked maxima fuse into their reductions,
    O(R * Q * H * W * C) work and no [R, P, Q, H, W, C] array; see `_range_max` for the
    O(H * W * C * log H * log W + R * P * Q * C) alternative used by `roi_pool`.
    """
    neg = jnp.array(-jnp.inf, feature.dtype)
    by_col = jnp.max(jnp.where(cols[:, :, None, :, None], feature[None, None], neg), axis=3)
    out = jnp.max(jnp.where(rows[:, :, None, :, None], by_col[:, None], neg), axis=3)
    empty = ~jnp.any(rows, -1)[:, :, None] | ~jnp.any(cols, -1)[:, None, :]
    return jnp.where(empty[..., None], jnp.zeros((), feature.dtype), out)


def _levels(n: int) -> int:
    """Sparse-table levels of a length-n axis: windows 1, 2, 4, ... <= n."""
    return n.bit_length()


def _sparse_table(feature):
    """[H, W, C] -> [KH, KW, H, W, C]: entry (k, l, h, w) is the max over rows
    h .. h + 2^k - 1 and columns w .. w + 2^l - 1 (clipped to the map)."""
    h, w, _ = feature.shape
    neg = jnp.array(-jnp.inf, feature.dtype)
    rows = [feature]
    for k in range(1, _levels(h)):
        prev, step = rows[-1], 1 << (k - 1)
        shifted = jnp.concatenate([prev[step:], jnp.full_like(prev[:step], neg)], axis=0)
        rows.append(jnp.maximum(prev, shifted))
    table = []
    for r in rows:
        cols = [r]
        for k in range(1, _levels(w)):
            prev, step = cols[-1], 1 << (k - 1)
            shifted = jnp.concatenate([prev[:, step:], jnp.full_like(prev[:, :step], neg)], 1)
            cols.append(jnp.maximum(prev, shifted))
        table.append(jnp.stack(cols))
    return jnp.stack(table)


def _floor_log2(n):
    """floor(log2(n)) of int32 n >= 1, exactly (no float rounding)."""
    bits = jnp.arange(31, dtype=jnp.int32)
    return jnp.sum((n[..., None] >> bits) > 1, axis=-1).astype(jnp.int32)


def _range_max(feature, r0, r1, c0, c1):
    """Max of feature [H, W, C] over rows [r0, r1) x columns [c0, c1) for int32 bounds
    r0, r1 [R, P] and c0, c1 [R, Q] -> [R, P, Q, C], 0 in empty bins.

    Four lookups per bin in a 2-D sparse table of power-of-two windows (two overlapping
    windows cover any run). The gradient reaches the maxima through the lookups (exact ties
    share it).
    """
    table = _sparse_table(feature)
    lr = jnp.maximum(r1 - r0, 1)
    lc = jnp.maximum(c1 - c0, 1)
    kr, kc = _floor_log2(lr), _floor_log2(lc)
    top, bottom = r0, r0 + lr - (1 << kr)  # [R, P]
    left, right = c0, c0 + lc - (1 << kc)  # [R, Q]
    kh, kw = kr[:, :, None], kc[:, None, :]
    t, b = top[:, :, None], bottom[:, :, None]
    lf, rt = left[:, None, :], right[:, None, :]
    out = jnp.maximum(
        jnp.maximum(table[kh, kw, t, lf], table[kh, kw, t, rt]),
        jnp.maximum(table[kh, kw, b, lf], table[kh, kw, b, rt]),
    )
    empty = (r1 <= r0)[:, :, None] | (c1 <= c0)[:, None, :]
    return jnp.where(empty[..., None], jnp.zeros((), feature.dtype), out)


def _round(x):
    """C's round(): halves away from zero (jnp.round rounds them to even)."""
    return jnp.sign(x) * jnp.floor(jnp.abs(x) + 0.5)


def _roi_bounds(start, end, bins: int, size: int):
    """torchvision roi_pool's bins along one axis -> (first, last) [R, bins] int32: bin p
    holds cells first .. last - 1 (empty when last <= first).

    The box spans cells round(start) .. round(end) inclusive (at least one); bin p covers
    [floor(p * L / bins), ceil((p + 1) * L / bins)) from there, clipped to the map.
    The bin edges are computed in exact integer arithmetic (floor(p L / bins) as
    (p L) // bins), which is what torchvision's float arithmetic gives for these small
    integers; a float product such as 3 * (7 / 3) may land just above 7 under XLA's fused
    division and widen a bin by a cell.
    """
    lo = _round(start).astype(jnp.int32)
    length = jnp.maximum(_round(end).astype(jnp.int32) - lo + 1, 1)[:, None]
    p = jnp.arange(bins, dtype=jnp.int32)[None, :]
    first = jnp.clip((p * length) // bins + lo[:, None], 0, size)
    last = jnp.clip(-((-(p + 1) * length) // bins) + lo[:, None], 0, size)
    return first, last


def roi_pool(feature, boxes, output_size: int | Sequence[int], spatial_scale: float = 1.0):
    """torchvision.ops.roi_pool for one channels-last map (Fast R-CNN's RoI max pooling).

    feature: [H, W, C] float; boxes: [R, 4] (y1, x1, y2, x2) input pixels; output_size: int or
    (out_h, out_w); spatial_scale: 1 / stride. torchvision's legacy arithmetic: the scaled
    corners are rounded (halves away from zero) and the box covers cells y1..y2 inclusive.
    Returns [R, out_h, out_w, C] in feature.dtype, 0 in bins that fall off the map. The
    gradient goes to each bin's maximum (shared between exact ties, where torchvision picks
    the first). Cost: a sparse table of the map (log H * log W copies) and four lookups per
    bin, independent of the box sizes.
    """
    out_h, out_w = _pair(output_size, "roi_pool output_size")
    b = _check(feature, boxes, spatial_scale, "roi_pool")
    r0, r1 = _roi_bounds(b[:, 0], b[:, 2], out_h, feature.shape[0])
    c0, c1 = _roi_bounds(b[:, 1], b[:, 3], out_w, feature.shape[1])
    return _range_max(feature, r0, r1, c0, c1)


def _adaptive_mask(size: int, bins: int):
    mask = np.zeros((1, bins, size), bool)
    for p, (s, e) in enumerate(adaptive_bins(size, bins)):
        mask[0, p, s:e] = True
    return jnp.asarray(mask)


def spatial_pyramid_pool(
    feature, boxes=None, levels: Sequence[int] = (1, 2, 4), spatial_scale: float = 1.0
):
    """SPPNet's pyramid: max pooling into n x n bins for each n in `levels`, concatenated.

    feature: [H, W, C] float. Without boxes the whole map is pooled with PyTorch's adaptive
    bins (torch adaptive_max_pool2d per level) -> [C * sum(n * n)]. With boxes [R, 4]
    (y1, x1, y2, x2) input pixels, each box is pooled as by `roi_pool` (one pyramid level is
    Fast R-CNN's RoI pooling) -> [R, C * sum(n * n)]. Each level is flattened from [n, n, C]
    row-major (bin row, bin column, channel), levels in the given order.
    """
    levels = tuple(levels)
    if not levels or not all(isinstance(n, int) and n >= 1 for n in levels):
        raise ValueError(f"spatial_pyramid_pool levels must be ints >= 1, got {levels!r}")
    if boxes is None:
        if feature.ndim != 3 or min(feature.shape) < 1:
            raise ValueError(
                f"spatial_pyramid_pool: feature must be [H, W, C], got {feature.shape}"
            )
        h, w, _ = feature.shape
        pooled = [_bin_max(feature, _adaptive_mask(h, n), _adaptive_mask(w, n)) for n in levels]
        return jnp.concatenate([p.reshape(-1) for p in pooled])
    pooled = [roi_pool(feature, boxes, n, spatial_scale) for n in levels]
    return jnp.concatenate([p.reshape(p.shape[0], -1) for p in pooled], axis=1)
