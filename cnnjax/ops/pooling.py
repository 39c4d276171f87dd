"""Pooling with PyTorch's exact window arithmetic: adaptive average and ceil-mode max pooling.

Both are pure jnp on channels-last arrays [..., H, W, C] (any number of leading batch dims), so
torchvision layouts (AdaptiveAvgPool2d, MaxPool2d(ceil_mode=True)) port without shape drift.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp


def _pair(v, what: str) -> tuple[int, int]:
    pair = (v, v) if isinstance(v, int) else tuple(v)
    if len(pair) != 2 or not all(isinstance(p, int) and p > 0 for p in pair):
        raise ValueError(f"{what} must be a positive int or a pair of them, got {v!r}")
    return pair


def _check_spatial(x, fn: str):
    if x.ndim < 3 or x.shape[-3] < 1 or x.shape[-2] < 1:
        raise ValueError(f"{fn} needs x of shape [..., H, W, C] with H, W >= 1, got {x.shape}")


def adaptive_bins(size: int, out: int) -> list[tuple[int, int]]:
    """PyTorch's adaptive windows along one axis of length `size`: `out` pairs (start, end).

    start = floor(i * size / out), end = ceil((i + 1) * size / out), end exclusive. Windows
    overlap when `out` does not divide `size`, and repeat positions when out > size.
    """
    return [((i * size) // out, -(-(i + 1) * size // out)) for i in range(out)]


def _adaptive_mean(x, axis: int, out: int):
    size = x.shape[axis]
    if size % out == 0:  # equal, disjoint windows: a single reshape + mean
        return x.reshape(x.shape[:axis] + (out, size // out) + x.shape[axis + 1 :]).mean(axis + 1)
    pieces = [
        jax.lax.slice_in_dim(x, s, e, axis=axis).mean(axis, keepdims=True)
        for s, e in adaptive_bins(size, out)
    ]
    return jnp.concatenate(pieces, axis=axis)


def adaptive_avg_pool(x, output_size: int | Sequence[int]):
    """torch.nn.functional.adaptive_avg_pool2d for channels-last input.

    x: [..., H, W, C] float; output_size: int (square) or (out_h, out_w).
    Returns [..., out_h, out_w, C] in x.dtype, where cell (i, j) is the mean of rows
    adaptive_bins(H, out_h)[i] and columns adaptive_bins(W, out_w)[j]. The window is a
    product of row and column ranges, so averaging rows then columns gives the same mean.
    """
    out_h, out_w = _pair(output_size, "adaptive_avg_pool output_size")
    _check_spatial(x, "adaptive_avg_pool")
    x = _adaptive_mean(x, x.ndim - 3, out_h)
    return _adaptive_mean(x, x.ndim - 2, out_w)


def _pool_out(size: int, window: int, stride: int, pad: int, ceil_mode: bool) -> int:
    """PyTorch's pooled length along one axis (ceil_mode drops a window starting in padding)."""
    span = size + 2 * pad - window
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def max_pool(x, window: int, stride: int, padding: int = 0, ceil_mode: bool = False):
    """torch.nn.MaxPool2d(window, stride, padding, ceil_mode) for channels-last input.

    x: [..., H, W, C] float -> [..., H', W', C] in x.dtype, with
    H' = floor_or_ceil((H + 2 * padding - window) / stride) + 1 (ceil_mode drops a last window
    that would start in the bottom padding, as PyTorch does). Padding never wins the max.
    """
    _check_spatial(x, "max_pool")
    if min(window, stride) < 1 or not 0 <= padding <= window // 2:
        raise ValueError(
            f"max_pool needs window, stride >= 1 and 0 <= padding <= window // 2, "
            f"got window={window}, stride={stride}, padding={padding}"
        )
    h, w = x.shape[-3], x.shape[-2]
    outs = [_pool_out(n, window, stride, padding, ceil_mode) for n in (h, w)]
    if min(outs) < 1:
        raise ValueError(
            f"max_pool(window={window}, stride={stride}, padding={padding}, "
            f"ceil_mode={ceil_mode}) leaves no output for a {h}x{w} input"
        )
    # Bottom/right padding that makes a VALID window sweep produce exactly `outs`.
    extra = [
        max(0, (o - 1) * stride + window - (n + 2 * padding))
        for o, n in zip(outs, (h, w), strict=True)
    ]
    lead = x.ndim - 3
    pads = ((0, 0),) * lead + tuple((padding, padding + e) for e in extra) + ((0, 0),)
    return jax.lax.reduce_window(
        x,
        -jnp.inf,
        jax.lax.max,
        (1,) * lead + (window, window, 1),
        (1,) * lead + (stride, stride, 1),
        pads,
    )
