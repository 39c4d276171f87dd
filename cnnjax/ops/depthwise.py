"""Depthwise convolution as k*k shifted multiplies, for XLA:CPU.

XLA:CPU has no fast depthwise kernel (jax-ml/jax#13800, #23713): a grouped
`lax.conv_general_dilated` with one input channel per group runs its forward and its input
gradient as a generic convolution, an order of magnitude slower than PyTorch's. Written as
k*k strided slices of the padded input, each times its tap of the kernel, the forward is one
fused elementwise loop, and so is its input gradient (pads and multiplies). The weight
gradient is a reduction over batch and space per tap; there XLA's own grouped convolution is
the faster of the two (BENCHMARKS.md, "CPU: depthwise convolutions"), so the backward pass
uses it for that term only.

`depthwise_conv` has `lax.conv_general_dilated`'s arguments (NHWC input, HWIO kernel with one
input channel, feature_group_count = channels) and its result within float tolerance;
`applies` says which calls it covers. Everything else (channel multipliers, lhs dilation,
other layouts) stays on `lax.conv_general_dilated`.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

_NHWC = ("NHWC", "HWIO", "NHWC")


def applies(lhs, rhs, dimension_numbers, lhs_dilation, feature_group_count, batch_group_count):
    """Whether a conv call is a plain 2-D depthwise one this module computes: lhs
    [N, H, W, C], rhs [kh, kw, 1, C], feature_group_count C, no lhs dilation."""
    if lhs.ndim != 4 or rhs.ndim != 4 or dimension_numbers is None:
        return False
    ones = (1, 1, 1, 1)
    dn = lax.conv_dimension_numbers(ones, ones, dimension_numbers)
    if dn != lax.conv_dimension_numbers(ones, ones, _NHWC):
        return False
    channels = lhs.shape[-1]
    return (
        batch_group_count == 1
        and feature_group_count == channels
        and channels > 1
        and rhs.shape[2] == 1
        and rhs.shape[3] == channels
        and tuple(lhs_dilation or (1, 1)) == (1, 1)
    )


def _pads(x_shape, kernel, strides, padding, dilation):
    if isinstance(padding, str):
        window = tuple((k - 1) * d + 1 for k, d in zip(kernel, dilation, strict=True))
        return tuple(tuple(p) for p in lax.padtype_to_pads(x_shape, window, strides, padding))
    return tuple((int(lo), int(hi)) for lo, hi in padding)


def depthwise_conv(
    lhs,
    rhs,
    window_strides,
    padding,
    rhs_dilation=None,
    precision=None,
    preferred_element_type=None,
):
    """x [N, H, W, C], kernel [kh, kw, 1, C] -> [N, H', W', C], as
    `lax.conv_general_dilated(x, kernel, window_strides, padding, rhs_dilation=rhs_dilation,
    dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=C)`.

    Products are summed in float32 (or `preferred_element_type`) whatever the input dtype and
    cast to the conv's result dtype at the end.
    """
    strides = tuple(int(s) for s in window_strides)
    dilation = tuple(int(d) for d in (rhs_dilation or (1, 1)))
    pads = _pads(lhs.shape[1:3], rhs.shape[:2], strides, padding, dilation)
    out_dtype = preferred_element_type or lhs.dtype
    return _depthwise(lhs, rhs, strides, pads, dilation, precision, out_dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def _depthwise(x, w, strides, pads, dilation, precision, out_dtype):
    return _shifted(x, w, strides, pads, dilation, out_dtype)


def _shifted(x, w, strides, pads, dilation, out_dtype):
    acc = jnp.promote_types(out_dtype, jnp.float32)
    n, _, _, c = x.shape
    kh, kw = w.shape[:2]
    (sh, sw), (dh, dw) = strides, dilation
    zero = jnp.zeros((), x.dtype)
    xp = lax.pad(x, zero, ((0, 0, 0), (*pads[0], 0), (*pads[1], 0), (0, 0, 0)))
    ho = (xp.shape[1] - (kh - 1) * dh - 1) // sh + 1
    wo = (xp.shape[2] - (kw - 1) * dw - 1) // sw + 1
    if ho <= 0 or wo <= 0:
        raise ValueError(
            f"depthwise conv of a {x.shape[1]}x{x.shape[2]} input with a {kh}x{kw} kernel "
            f"(dilation {dilation}, padding {pads}) has no output positions"
        )
    wa = w.astype(acc)
    out = None
    for i in range(kh):
        for j in range(kw):
            tap = lax.slice(
                xp,
                (0, i * dh, j * dw, 0),
                (n, i * dh + sh * (ho - 1) + 1, j * dw + sw * (wo - 1) + 1, c),
                (1, sh, sw, 1),
            )
            term = tap.astype(acc) * wa[i, j, 0]
            out = term if out is None else out + term
    return out.astype(out_dtype)


def _depthwise_fwd(x, w, strides, pads, dilation, precision, out_dtype):
    return _shifted(x, w, strides, pads, dilation, out_dtype), (x, w)


def _depthwise_bwd(strides, pads, dilation, precision, out_dtype, residuals, g):
    x, w = residuals
    # Input gradient: the transpose of the shifted multiplies (pads and multiplies, fused).
    _, dx_fn = jax.vjp(lambda x_: _shifted(x_, w, strides, pads, dilation, out_dtype), x)
    # Weight gradient: XLA's grouped convolution's own transpose (faster here than k*k
    # batch-and-space reductions).
    _, dw_fn = jax.vjp(
        lambda w_: lax.conv_general_dilated(
            x,
            w_,
            strides,
            pads,
            rhs_dilation=dilation,
            dimension_numbers=_NHWC,
            feature_group_count=x.shape[-1],
            precision=precision,
            preferred_element_type=None if out_dtype == x.dtype else out_dtype,
        ),
        w,
    )
    return dx_fn(g)[0], dw_fn(g.astype(out_dtype))[0]


_depthwise.defvjp(_depthwise_fwd, _depthwise_bwd)


def shifted_depthwise(conv_general_dilated):
    """A `conv_general_dilated`-compatible function (for `nn.Conv(conv_general_dilated=...)`)
    that computes the depthwise calls `applies` covers with `depthwise_conv` and passes every
    other call to `conv_general_dilated` unchanged."""

    @functools.wraps(conv_general_dilated)
    def conv(
        lhs,
        rhs,
        window_strides,
        padding,
        lhs_dilation=None,
        rhs_dilation=None,
        dimension_numbers=None,
        feature_group_count=1,
        batch_group_count=1,
        precision=None,
        preferred_element_type=None,
    ):
        if applies(
            lhs, rhs, dimension_numbers, lhs_dilation, feature_group_count, batch_group_count
        ):
            return depthwise_conv(
                lhs, rhs, window_strides, padding, rhs_dilation, precision, preferred_element_type
            )
        return conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
            feature_group_count, batch_group_count, precision, preferred_element_type,
        )  # fmt: skip

    conv.shifted_depthwise = True
    return conv
