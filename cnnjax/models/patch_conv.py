"""Convolution as im2col + matmul, a drop-in for `lax.conv_general_dilated` inside `nn.Conv`.

XLA:CPU's backward pass for ordinary convolutions transposes activations to CHWN for the
weight gradient and re-materialises cheap producers into it; written as patches @ kernel the
whole step is matmuls that XLA:CPU runs well (measured in BENCHMARKS.md). `PatchConv` is
`nn.Conv` with this function plugged in, so parameter names, shapes and initialisers (and
therefore checkpoints and torchvision conversion) are exactly nn.Conv's. Cases it does not
cover (grouped/depthwise, dilated, non-2D) go to `lax.conv_general_dilated` unchanged.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from cnnjax.runtime.materialize import materialized_conv

# Narrower inputs stay on XLA's convolution: measured on 2 Zen 3 cores (BENCHMARKS.md), im2col
# ran ResNet-34's 64-512-channel layers 2x faster but the CIFAR ResNets' 16-64-channel
# layers 1.7x slower than XLA's own convolution.
MIN_CHANNELS = 64


def _is_nhwc_hwio(dn, ndim: int) -> bool:
    if ndim != 4 or dn is None:
        return False
    dn = lax.conv_dimension_numbers((1,) * 4, (1,) * 4, dn)
    return dn == lax.conv_dimension_numbers((1,) * 4, (1,) * 4, ("NHWC", "HWIO", "NHWC"))


def _zero_padding(padding) -> bool:
    if isinstance(padding, str):
        return padding.upper() in ("SAME", "VALID")
    return all(lo == 0 and hi == 0 for lo, hi in padding)


def conv_general_dilated(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision=None,
    preferred_element_type=None,
):
    """`lax.conv_general_dilated` with the same arguments and result.

    lhs [N, H, W, Cin] (NHWC), rhs [kh, kw, Cin, Cout] (HWIO) -> [N, H', W', Cout]. Plain 2-D
    convolutions become patches [N, H', W', kh*kw*Cin] times the kernel reshaped to
    [kh*kw*Cin, Cout]; 1x1 ones are a strided slice and an einsum.
    """
    ones = (1,) * max(lhs.ndim - 2, 0)
    simple = (
        _is_nhwc_hwio(dimension_numbers, lhs.ndim)
        and tuple(lhs_dilation or ones) == ones
        and tuple(rhs_dilation or ones) == ones
        and feature_group_count == 1
        and batch_group_count == 1
        and rhs.shape[-2] >= MIN_CHANNELS
    )
    if not simple:
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
            feature_group_count, batch_group_count, precision, preferred_element_type,
        )  # fmt: skip
    kh, kw, _, cout = rhs.shape
    sh, sw = window_strides
    if (kh, kw) == (1, 1) and _zero_padding(padding):
        y = jnp.einsum("nhwc,cf->nhwf", lhs[:, ::sh, ::sw, :], rhs[0, 0], precision=precision,
                       preferred_element_type=preferred_element_type)  # fmt: skip
        return y
    patches = _patches(lhs, kh, kw, window_strides, padding)
    kernel = rhs.reshape(-1, cout)  # HWIO flattens in the patches' (kh, kw, C) order
    return jnp.matmul(
        patches, kernel, precision=precision, preferred_element_type=preferred_element_type
    )


def _patches(x, kh: int, kw: int, strides, padding):
    """x [N, H, W, C] -> [N, H', W', kh * kw * C] in HWIO's (kh, kw, C) order.

    Built from kh * kw strided slices of the padded input: pure data movement whose gradient
    is pads and adds. (`lax.conv_general_dilated_patches` is itself a convolution with a
    one-hot kernel of kh * kw * C outputs; its gradient on CPU costs more than the conv.)
    """
    sh, sw = strides
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(x.shape[1:3], (kh, kw), strides, padding)
    pads = tuple(tuple(p) for p in padding)
    x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    ho, wo = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
    cols = [
        x[:, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw, :]
        for i in range(kh)
        for j in range(kw)
    ]
    return jnp.concatenate(cols, axis=-1)


PatchConv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)

CONVS = {"xla": nn.Conv, "patch": PatchConv}
# The same convolutions with the recompute barrier around them (cnnjax/runtime/materialize.py):
# the input and the gradient at the output are materialised once. Same parameters and values.
MATERIALIZED_CONVS = {
    "xla": functools.partial(
        nn.Conv, conv_general_dilated=materialized_conv(lax.conv_general_dilated)
    ),
    "patch": functools.partial(
        nn.Conv, conv_general_dilated=materialized_conv(conv_general_dilated)
    ),
}


def conv_for_backend(name: str, backend: str | None = None, materialize: bool = False):
    """'xla' | 'patch' | 'auto' -> the conv module; 'auto' is PatchConv on CPU (faster there,
    see BENCHMARKS.md) and nn.Conv on GPU/TPU, where cuDNN/XLA's own convolutions win.
    `materialize` picks the variant behind the recompute barrier."""
    if name == "auto":
        name = "patch" if (backend or jax.default_backend()) == "cpu" else "xla"
    if name not in CONVS:
        raise ValueError(f"conv implementation {name!r} is not one of {['auto', *CONVS]}")
    return (MATERIALIZED_CONVS if materialize else CONVS)[name]
