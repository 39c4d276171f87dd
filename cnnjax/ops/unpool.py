"""Max-pooling that remembers where each maximum came from, and the unpooling that puts values
back there: SegNet's and DeconvNet's "switches".

Both are pure jnp on channels-last maps [..., H, W, C] (any leading batch dims). A switch is
the position of the maximum *inside its window*, a * window_w + b for the window's row a and
column b (int32), so it needs no knowledge of the map's width; PyTorch's
`F.max_pool2d(return_indices=True)` instead stores the flat index (i * s + a) * W + (j * s + b)
in the whole map. With equal values the first maximum in row-major window order wins, as in
PyTorch. Window arithmetic is PyTorch's with padding 0:
floor mode: H' = (H - k) // s + 1, the last (H - k) % s rows are never read;
ceil mode:  H' = ceil((H - k) / s) + 1, the last window is cut off by the border (it may
not start at or beyond H), so every row is read (Caffe's, and SegNet's, pooling).
"""

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

PairLike = int | Sequence[int]


def _pair(v, what: str) -> tuple[int, int]:
    pair = (v, v) if isinstance(v, int) else tuple(v)
    if len(pair) != 2 or not all(isinstance(p, int) and not isinstance(p, bool) for p in pair):
        raise ValueError(f"{what} must be a positive int or a pair of them, got {v!r}")
    if min(pair) < 1:
        raise ValueError(f"{what} must be a positive int or a pair of them, got {v!r}")
    return pair


def pooled_size(size: int, window: int, stride: int, ceil_mode: bool = False) -> int:
    """Output length of a max-pool along one axis of length `size` (PyTorch's rule, padding 0).

    floor: (size - window) // stride + 1; ceil: ceil((size - window) / stride) + 1, less one
    when that last window would start at or beyond `size`. ValueError if window > size.
    """
    if window > size:
        raise ValueError(f"a pooling window of {window} does not fit in a map of size {size}")
    if not ceil_mode:
        return (size - window) // stride + 1
    out = math.ceil((size - window) / stride) + 1
    return out - 1 if (out - 1) * stride >= size else out


def _windows(x, window, stride, out_hw):
    """x [..., H, W, C] -> [..., H', W', C, kh * kw]: every window's values, row-major.

    H, W must already cover the last window: H >= (H' - 1) * sh + kh.
    """
    (kh, kw), (sh, sw), (oh, ow) = window, stride, out_hw
    taps = []
    for a in range(kh):
        for b in range(kw):
            rows = jax.lax.slice_in_dim(x, a, a + (oh - 1) * sh + 1, sh, axis=x.ndim - 3)
            taps.append(jax.lax.slice_in_dim(rows, b, b + (ow - 1) * sw + 1, sw, axis=x.ndim - 2))
    return jnp.stack(taps, axis=-1)


def _pad_to_cover(x, window, stride, out_hw, value):
    """Pads the bottom/right of x [..., H, W, C] with `value` so the last windows fit."""
    need = [(o - 1) * s + k for o, s, k in zip(out_hw, stride, window, strict=True)]
    extra = [max(0, n - have) for n, have in zip(need, x.shape[-3:-1], strict=True)]
    if not any(extra):
        return x
    pads = [(0, 0)] * (x.ndim - 3) + [(0, extra[0]), (0, extra[1]), (0, 0)]
    return jnp.pad(x, pads, constant_values=value)


def max_pool_with_switches(x, window: PairLike = 2, stride: PairLike = 2, ceil_mode=False):
    """Max-pool x and return where each maximum was: (pooled, switches).

    x: [..., H, W, C] floating; window, stride: int or (h, w) pairs; ceil_mode: see the module
    docstring (False: PyTorch's default floor mode).
    Returns pooled [..., H', W', C] in x.dtype and switches [..., H', W', C] int32 in
    [0, kh * kw): the in-window position a * kw + b of each maximum, so
    pooled[..., i, j, c] = x[..., i * sh + a, j * sw + b, c].
    Differentiable in x: the gradient of pooled[i, j] goes to its switch position only (as in
    PyTorch; jnp.max would split it between tied maxima).
    """
    window, stride = _pair(window, "window"), _pair(stride, "stride")
    if x.ndim < 3:
        raise ValueError(f"max_pool_with_switches needs x [..., H, W, C], got shape {x.shape}")
    out_hw = tuple(
        pooled_size(n, k, s, ceil_mode)
        for n, k, s in zip(x.shape[-3:-1], window, stride, strict=True)
    )
    x_full = _pad_to_cover(x, window, stride, out_hw, -jnp.inf)
    taps = _windows(x_full, window, stride, out_hw)
    switches = jnp.argmax(taps, axis=-1).astype(jnp.int32)
    pooled = jnp.take_along_axis(taps, switches[..., None], axis=-1)[..., 0]
    return pooled, switches


def _spatial(output_shape, ndim: int) -> tuple[int, int]:
    shape = tuple(output_shape)
    if len(shape) == ndim:  # the full shape of the map that was pooled
        shape = shape[-3:-1]
    if len(shape) != 2:
        raise ValueError(f"output_shape must be (H, W) or the pooled map's shape, got {shape}")
    return int(shape[0]), int(shape[1])


def max_unpool(y, switches, output_shape, window: PairLike = 2, stride: PairLike = 2):
    """Inverse of `max_pool_with_switches`: each value goes back to its switch, zeros elsewhere.

    y: [..., H', W', C] (pooled values, or any map of that shape, e.g. a decoder's);
    switches: [..., H', W', C] int from `max_pool_with_switches` with the same window and
    stride; output_shape: (H, W), or the full shape, of the map that was pooled (it fixes the
    rows and columns floor mode dropped, which stay zero).
    Returns [..., H, W, C] in y.dtype with out[..., i * sh + a, j * sw + b, c] =
    y[..., i, j, c] for (a, b) = divmod(switches[..., i, j, c], kw) (PyTorch's
    `F.max_unpool2d` with its flat indices). Where overlapping windows (stride < window)
    share a maximum the values add up (PyTorch keeps an arbitrary one). The gradient with
    respect to y gathers the output's gradient at the switches.
    """
    (kh, kw), (sh, sw) = _pair(window, "window"), _pair(stride, "stride")
    if y.shape != switches.shape or y.ndim < 3:
        raise ValueError(
            f"max_unpool needs y and switches of one shape [..., H', W', C], got {y.shape} and "
            f"{switches.shape}"
        )
    (h, w), (oh, ow) = _spatial(output_shape, y.ndim), y.shape[-3:-1]
    if (oh - 1) * sh >= h or (ow - 1) * sw >= w:
        raise ValueError(
            f"max_unpool: {oh}x{ow} windows of stride {(sh, sw)} cannot come from a {h}x{w} map"
        )
    full_h, full_w = max(h, (oh - 1) * sh + kh), max(w, (ow - 1) * sw + kw)
    out = jnp.zeros((*y.shape[:-3], full_h, full_w, y.shape[-1]), y.dtype)
    for a in range(kh):
        for b in range(kw):
            rows = slice(a, a + (oh - 1) * sh + 1, sh)
            cols = slice(b, b + (ow - 1) * sw + 1, sw)
            hit = jnp.where(switches == a * kw + b, y, jnp.zeros((), y.dtype))
            out = out.at[..., rows, cols, :].add(hit)
    return out[..., :h, :w, :]
