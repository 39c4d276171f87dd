"""Upsampling on channels-last maps: the parameter-free kinds (nearest, bilinear) and the
transposed convolution, with FCN's bilinear initialisation that connects the two.

Every function takes x of shape [..., H, W, C] (NHWC, any leading batch dims) and keeps its
dtype. PyTorch conventions are followed so that layouts and weights port unchanged:
`bilinear` is `F.interpolate(mode='bilinear', antialias=False)` and `transposed_conv` is
`F.conv_transpose2d` with PyTorch's `padding`.
"""

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

PairLike = int | Sequence[int]


def _pair(v, what: str, real: bool = False, positive: bool = True) -> tuple:
    """v or (v_h, v_w) -> a pair of ints (of ints or floats when `real`), checked."""
    kind = (int, float) if real else int
    pair = (v, v) if isinstance(v, int | float) else tuple(np.ravel(v).tolist())
    ok = len(pair) == 2 and all(
        isinstance(p, kind) and not isinstance(p, bool) and (p > 0 if positive else p >= 0)
        for p in pair
    )
    if not ok:
        sign = "positive" if positive else "non-negative"
        noun = "number" if real else "int"
        raise ValueError(f"{what} must be a {sign} {noun} or a pair of them, got {v!r}")
    return pair


def _check_map(x, fn: str) -> None:
    if x.ndim < 3 or x.shape[-3] < 1 or x.shape[-2] < 1:
        raise ValueError(f"{fn}: x must have shape [..., H, W, C] with H, W >= 1, got {x.shape}")


def nearest(x, factor: PairLike):
    """Nearest-neighbour upsampling by an integer factor (each pixel becomes an fh x fw block).

    x: [..., H, W, C] any dtype; factor: int f or (fh, fw), positive ints.
    Returns [..., H*fh, W*fw, C] in x.dtype with out[..., i, j, :] = x[..., i // fh, j // fw, :]
    (PyTorch `F.interpolate(mode='nearest', scale_factor=f)` for integer f).
    """
    fh, fw = _pair(factor, "nearest factor")
    _check_map(x, "nearest")
    return jnp.repeat(jnp.repeat(x, fh, axis=-3), fw, axis=-2)


def _linear_taps(n_in: int, n_out: int, align_corners: bool):
    """Per output index along one axis: (i0 [n_out] int32, i1 [n_out] int32, w1 [n_out] f64).

    out[o] = (1 - w1[o]) * x[i0[o]] + w1[o] * x[i1[o]], PyTorch's source-index rule:
    align_corners=False: src = max(0, (o + 0.5) * n_in / n_out - 0.5) (half-pixel centres);
    align_corners=True: src = o * (n_in - 1) / (n_out - 1) (0 when n_out == 1).
    """
    o = np.arange(n_out, dtype=np.float64)
    if align_corners:
        src = o * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
    else:
        src = np.maximum((o + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int32), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, src - i0


def _resize_axis(x, axis: int, n_out: int, align_corners: bool):
    i0, i1, w1 = _linear_taps(x.shape[axis], n_out, align_corners)
    shape = [1] * x.ndim
    shape[axis] = n_out
    w1 = jnp.asarray(w1, x.dtype).reshape(shape)
    x0, x1 = jnp.take(x, i0, axis=axis), jnp.take(x, i1, axis=axis)
    return x0 + w1 * (x1 - x0)


def _output_size(x, size, factor) -> tuple[int, int]:
    if (size is None) == (factor is None):
        raise ValueError(f"bilinear needs exactly one of size and factor, got {size=}, {factor=}")
    if size is not None:
        return _pair(size, "bilinear size")
    fh, fw = _pair(factor, "bilinear factor", real=True)
    out = (math.floor(x.shape[-3] * fh), math.floor(x.shape[-2] * fw))
    if min(out) < 1:
        raise ValueError(f"bilinear factor {factor!r} maps {x.shape[-3:-1]} to an empty {out}")
    return out


def bilinear(x, size: PairLike | None = None, factor=None, align_corners: bool = False):
    """Bilinear resize of a map to (H', W'), PyTorch's `F.interpolate(mode='bilinear')`.

    x: [..., H, W, C] floating (float32, bfloat16, ...); give exactly one of
    size: int or (H', W') positive ints, or factor: float or (fh, fw) positive numbers, which
    sets H' = floor(H * fh), W' = floor(W * fw).
    Returns [..., H', W', C] in x.dtype (computed in at least float32). Differentiable in x.

    The source coordinate of output row o is always derived from the sizes, scale = H / H':
    align_corners=False: src = max(0, (o + 0.5) * scale - 0.5) (half-pixel centres);
    align_corners=True: src = o * (H - 1) / (H' - 1), so corner pixels map onto corner pixels.
    Rows beyond the last input row repeat it (index clamping). This equals PyTorch with
    `size=` (or `scale_factor=` with `recompute_scale_factor=True`; PyTorch's default uses
    1 / scale_factor instead, which differs only for non-integer factors), and, when
    upsampling with align_corners=False, `jax.image.resize(x, shape, 'bilinear')`.
    Downsampling is the same 2-tap interpolation with no antialiasing (PyTorch's
    `antialias=False`); jax.image.resize would instead widen the triangle kernel to average
    over every input pixel, so the two differ when H' < H.
    """
    _check_map(x, "bilinear")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"bilinear: x must be a floating array, got dtype {x.dtype}")
    out_h, out_w = _output_size(x, size, factor)
    y = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    y = _resize_axis(y, y.ndim - 3, out_h, align_corners)
    y = _resize_axis(y, y.ndim - 2, out_w, align_corners)
    return y.astype(x.dtype)


def bilinear_kernel(factor: int, channels: int) -> jax.Array:
    """FCN's `get_upsampling_weight` in HWIO layout: [k, k, channels, channels] float32.

    k = 2 * factor - factor % 2; each channel maps to itself (zero off the channel diagonal)
    through the separable tent filt[a, b] = (1 - |a - c| / factor) * (1 - |b - c| / factor),
    c = factor - 1 for odd k, factor - 0.5 for even k. Symmetric under spatial flips, so
    PyTorch's and flax's kernel orientations agree.
    """
    if not isinstance(factor, int) or isinstance(factor, bool) or factor < 1:
        raise ValueError(f"bilinear_kernel factor must be a positive int, got {factor!r}")
    if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
        raise ValueError(f"bilinear_kernel channels must be a positive int, got {channels!r}")
    k = bilinear_kernel_size(factor)
    c = factor - 1 if k % 2 else factor - 0.5
    tent = 1 - np.abs(np.arange(k) - c) / factor
    kernel = np.zeros((k, k, channels, channels), np.float32)
    kernel[:, :, np.arange(channels), np.arange(channels)] = np.outer(tent, tent)[..., None]
    return jnp.asarray(kernel)


def bilinear_kernel_size(factor: int) -> int:
    """k = 2 * factor - factor % 2, FCN's transposed-convolution kernel for upsampling by factor."""
    return 2 * factor - factor % 2


def bilinear_padding(factor: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Padding for `flax.linen.ConvTranspose` so that k x k, stride `factor` maps H -> H * factor.

    flax passes integer padding straight to `lax.conv_transpose`, where it pads the
    stride-dilated input (not PyTorch's `padding`, which crops the output). PyTorch's
    ConvTranspose2d(k, stride=f, padding=f // 2) gives (H - 1) f - 2 (f // 2) + k = H f; the
    same layer in flax needs q = k - 1 - f // 2 on both sides of both axes. For every
    factor this equals what flax's `padding='SAME'` computes for this k.
    """
    k = bilinear_kernel_size(factor)
    q = k - 1 - factor // 2
    return (q, q), (q, q)


def bilinear_init(factor: int):
    """A `kernel_init` for `flax.linen.ConvTranspose` that sets FCN's bilinear kernel.

    Use as `nn.ConvTranspose(C, (k, k), strides=(f, f), padding=bilinear_padding(f),
    kernel_init=bilinear_init(f))` with k = bilinear_kernel_size(f), on inputs with C channels
    (the kernel is diagonal over channels, shape [k, k, C, C]): [B, H, W, C] -> [B, H f, W f, C].

    At init, output row o samples source row src = (o + 0.5) / f - 0.5 with the tent weights
    1 - |src - i| of `bilinear(align_corners=False)`, so with zero bias every output pixel
    at least f // 2 rows and columns away from the border equals bilinear(x, factor=f)
    exactly. The f // 2 outer rows / columns on each side have src outside [0, H - 1]:
    bilinear clamps to the edge pixel, while the transposed convolution reads the zero
    padding, giving (1 - d) * edge pixel for a distance d = |src - edge| < 1/2 (a darkened
    border). In PyTorch: ConvTranspose2d(C, C, k, stride=f, padding=f // 2) with the weight
    `bilinear_kernel(f, C).transpose(2, 3, 0, 1)`.
    """
    k = bilinear_kernel_size(factor)

    def init(key, shape, dtype=jnp.float32):
        del key
        shape = tuple(shape)
        if len(shape) != 4 or shape[:2] != (k, k) or shape[2] != shape[3]:
            raise ValueError(
                f"bilinear_init({factor}) needs a ConvTranspose kernel of shape [{k}, {k}, C, C] "
                f"(kernel_size=({k}, {k}), features equal to the input channels), got {shape}"
            )
        return bilinear_kernel(factor, shape[2]).astype(dtype)

    return init


def transposed_conv(x, kernel, stride: PairLike, padding: PairLike = 0):
    """Transposed convolution with PyTorch's `F.conv_transpose2d` semantics (scatter form).

    x: [B, H, W, Cin]; kernel: [kh, kw, Cin, Cout] (a PyTorch ConvTranspose2d weight
    [Cin, Cout, kh, kw] transposed by (2, 3, 0, 1)); stride, padding: int or pairs, padding
    >= 0 (PyTorch's: it crops `padding` pixels from each side of the full output).
    Returns [B, H', W', Cout] in the promoted dtype of x and kernel, with
    H' = (H - 1) * sh - 2 * ph + kh, and
    out[b, i * sh - ph + a, j * sw - pw + c, :] += x[b, i, j, :] @ kernel[a, c].

    `lax.conv_transpose` correlates the stride-dilated input with an unflipped kernel over
    padding k - 1 - p, so the flax layer `ConvTranspose(kernel=K, padding=q)` equals
    `transposed_conv(x, K[::-1, ::-1], s, k - 1 - q)`; for the symmetric bilinear kernel the
    flip does not matter.
    """
    if x.ndim != 4 or kernel.ndim != 4:
        raise ValueError(
            f"transposed_conv needs x [B, H, W, Cin] and kernel [kh, kw, Cin, Cout], got "
            f"x {x.shape} and kernel {kernel.shape}"
        )
    if kernel.shape[2] != x.shape[-1]:
        raise ValueError(
            f"transposed_conv kernel has {kernel.shape[2]} input channels (axis 2), x has "
            f"{x.shape[-1]}"
        )
    strides = _pair(stride, "transposed_conv stride")
    pads = _pair(padding, "transposed_conv padding", positive=False)
    k = kernel.shape[:2]
    out = [
        (n - 1) * s - 2 * p + kk for n, s, p, kk in zip(x.shape[1:3], strides, pads, k, strict=True)
    ]
    if min(out) < 1:
        raise ValueError(f"transposed_conv padding {padding!r} leaves an empty output {out}")
    lax_pads = [(kk - 1 - p, kk - 1 - p) for kk, p in zip(k, pads, strict=True)]
    return jax.lax.conv_transpose(
        x, kernel[::-1, ::-1], strides, lax_pads, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
