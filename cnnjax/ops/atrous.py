"""Atrous (dilated) convolution, DeepLab's way of enlarging the field of view without pooling:
a k x k kernel samples its input every `rate` pixels, covering `effective_kernel(k, rate)`.

`atrous_conv(x, kernel, rate)` is `lax.conv_general_dilated` with `rhs_dilation` (PyTorch's
`F.conv2d(dilation=rate)`); with 'SAME' padding an odd kernel at stride 1 keeps the map size
and pads rate * (k - 1) / 2 on each side, torchvision's `padding=dilation` for a 3x3.
"""

from collections.abc import Sequence

import jax.numpy as jnp
from jax import lax

Padding = str | int | Sequence[tuple[int, int]]


def effective_kernel(k: int, rate: int) -> int:
    """Span in pixels of a k-tap kernel dilated by `rate`: k + (k - 1) * (rate - 1).

    k, rate: positive ints. A 3x3 at rate 6 spans 13 x 13 pixels (DeepLab's ASPP at output
    stride 16: rates 6 / 12 / 18 span 13 / 25 / 37).
    """
    for value, what in ((k, "kernel size"), (rate, "rate")):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"effective_kernel: {what} must be a positive int, got {value!r}")
    return k + (k - 1) * (rate - 1)


def _pads(padding: Padding) -> str | list[tuple[int, int]]:
    if isinstance(padding, str):
        if padding.upper() not in ("SAME", "VALID"):
            raise ValueError(
                f"atrous_conv padding must be 'SAME', 'VALID', an int or pairs, got {padding!r}"
            )
        return padding.upper()
    if isinstance(padding, int):
        return [(padding, padding)] * 2
    return [tuple(p) for p in padding]


def atrous_conv(x, kernel, rate: int = 1, padding: Padding = "SAME", stride: int = 1):
    """Dilated 2-D convolution (cross-correlation, as every deep-learning conv).

    x: [B, H, W, Cin] floating; kernel: [k, k, Cin, Cout] (HWIO; a PyTorch weight
    [Cout, Cin, k, k] transposed by (2, 3, 1, 0)); rate: dilation >= 1; padding: 'SAME',
    'VALID', an int p (p on every side, PyTorch's `padding=p`) or ((top, bottom), (left,
    right)); stride: int >= 1.
    Returns [B, H', W', Cout] in the promoted dtype of x and kernel, with
    out[b, i, j, o] = sum_{a, c, ci} xp[b, i * stride + a * rate, j * stride + c * rate, ci]
    * kernel[a, c, ci, o] on the padded input xp; H' = (H + pads - effective_kernel(k, rate))
    // stride + 1 ('SAME': ceil(H / stride)). Differentiable in x and kernel.
    """
    if x.ndim != 4 or kernel.ndim != 4 or kernel.shape[2] != x.shape[-1]:
        raise ValueError(
            f"atrous_conv needs x [B, H, W, Cin] and kernel [k, k, Cin, Cout] with matching Cin, "
            f"got x {x.shape} and kernel {kernel.shape}"
        )
    effective_kernel(kernel.shape[0], rate)  # checks the rate
    if not isinstance(stride, int) or stride < 1:
        raise ValueError(f"atrous_conv stride must be a positive int, got {stride!r}")
    dtype = jnp.promote_types(x.dtype, kernel.dtype)
    return lax.conv_general_dilated(
        x.astype(dtype),
        kernel.astype(dtype),
        window_strides=(stride, stride),
        padding=_pads(padding),
        rhs_dilation=(rate, rate),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
