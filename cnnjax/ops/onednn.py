"""2-D convolutions and training BatchNorm on CPU through oneDNN, the library PyTorch's CPU
convolutions run on.

XLA:CPU computes a convolution's weight gradient as another convolution, over the batch,
and transposes the layer's NHWC input and output gradient into the layout its kernel wants
first; in a CIFAR ResNet's train step those transposes are the largest item of the profile,
and the weight gradients themselves run 1.3-5x slower than oneDNN's (BENCHMARKS.md, "CPU:
oneDNN convolutions"). XLA:CPU also has no depthwise kernel. oneDNN has forward,
backward-data and backward-weights kernels that read NHWC directly, grouped and depthwise
ones included. `conv_general_dilated` here has `lax.conv_general_dilated`'s signature (so it
plugs into `nn.Conv(conv_general_dilated=...)`) and sends each supported call to three XLA
FFI custom calls (cnnjax/runtime/ffi/onednn.cc); everything else goes to XLA unchanged.

Supported: 2-D, NHWC input / HWIO kernel / NHWC output (flax's), float32, any strides,
explicit or named padding (non-negative), kernel dilation, feature groups (depthwise
included), no input dilation (transposed convolutions stay XLA's). The gradient of each of
the three ops is written with the other two (a convolution is bilinear in its input and
kernel), so second-order gradients work too. `vmap` runs the custom calls once per mapped
element. The custom calls are registered for the CPU platform only.

`batch_norm_train` is BatchNorm's training step for float32 NHWC (statistics, normalisation,
and the three gradients each in oneDNN's fused kernels; cnnjax's `BatchNorm` uses it with
`train.batch_norm='onednn'`): where XLA:CPU writes an intermediate tensor for each of its
reductions, oneDNN reads the activations once for the statistics and once for the output.

oneDNN comes from pip (`onednn-cpu-gomp`, `onednn-devel-cpu-gomp`: cnnjax's dependencies on
x86-64 Linux) or from $CNNJAX_ONEDNN_ROOT (a directory with include/oneapi/dnnl/dnnl.hpp and
lib/libdnnl.so.3). The handler is compiled at set-up like the recompute barrier
(cnnjax/runtime/ffi_build.py); `available()` says whether it can be used and why not.
"""

import functools
import inspect
import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from cnnjax.runtime import ffi_build

ROOT_ENV = "CNNJAX_ONEDNN_ROOT"
FORWARD = "cnnjax_onednn_conv_fwd"
BACKWARD_DATA = "cnnjax_onednn_conv_bwd_data"
BACKWARD_WEIGHTS = "cnnjax_onednn_conv_bwd_weights"
BN_FORWARD = "cnnjax_onednn_bn_fwd"
BN_BACKWARD = "cnnjax_onednn_bn_bwd"
_NHWC = ("NHWC", "HWIO", "NHWC")
_LAX_SIGNATURE = inspect.signature(lax.conv_general_dilated)


def onednn_root() -> Path:
    """The oneDNN installation to build against: $CNNJAX_ONEDNN_ROOT, else this Python's
    prefix (where pip puts the onednn packages' headers and library)."""
    root = Path(os.environ.get(ROOT_ENV) or sys.prefix)
    header = root / "include" / "oneapi" / "dnnl" / "dnnl.hpp"
    library = root / "lib" / "libdnnl.so.3"
    if not header.exists() or not library.exists():
        missing = header if not header.exists() else library
        raise ffi_build.Unavailable(
            f"oneDNN not found ({missing} is missing): `pip install onednn-cpu-gomp "
            f"onednn-devel-cpu-gomp` into this environment, or set ${ROOT_ENV} to a oneDNN "
            "installation with include/ and lib/"
        )
    return root


def _flags() -> list[str]:
    root = onednn_root().resolve()
    lib = root / "lib"
    return [f"-I{root / 'include'}", f"-L{lib}", "-l:libdnnl.so.3", f"-Wl,-rpath,{lib}"]


LIBRARY = ffi_build.Library(
    ffi_build.FFI_SOURCES / "onednn.cc",
    "cnnjax_onednn",
    (
        (FORWARD, "CnnjaxOnednnConvFwd"),
        (BACKWARD_DATA, "CnnjaxOnednnConvBwdData"),
        (BACKWARD_WEIGHTS, "CnnjaxOnednnConvBwdWeights"),
        (BN_FORWARD, "CnnjaxOnednnBnFwd"),
        (BN_BACKWARD, "CnnjaxOnednnBnBwd"),
    ),
    _flags,
)


def available() -> tuple[bool, str]:
    """(True, '') when the custom calls are registered; (False, why not) otherwise."""
    return ffi_build.status(LIBRARY)


def build(force: bool = False) -> Path:
    """Compiles the handler if it is not there yet and returns its path."""
    return LIBRARY.build(force)


# ---- the three ops ---------------------------------------------------------------------------
# `geo`: (strides, pads, dilation, groups) with pads ((top, bottom), (left, right)).


def _attrs(geo) -> dict:
    (sh, sw), ((pt, pb), (pl, pr)), (dh, dw), groups = geo
    return {k: np.int64(v) for k, v in zip(
        ("sh", "sw", "pt", "pb", "pl", "pr", "dh", "dw", "groups"),
        (sh, sw, pt, pb, pl, pr, dh, dw, groups), strict=True)}  # fmt: skip


def _call(target: str, shape, a, b, geo):
    ok, why = available()  # one build attempt per process, not one per trace
    if not ok:
        raise ffi_build.Unavailable(why)
    out = jax.ShapeDtypeStruct(tuple(shape), jnp.float32)
    return jax.ffi.ffi_call(target, out, vmap_method="sequential")(a, b, **_attrs(geo))


def _out_shape(x_shape, w_shape, geo):
    strides, pads, dilation, _ = geo
    n, h, w, _ = x_shape
    kh, kw, _, co = w_shape
    ho = (h + sum(pads[0]) - (kh - 1) * dilation[0] - 1) // strides[0] + 1
    wo = (w + sum(pads[1]) - (kw - 1) * dilation[1] - 1) // strides[1] + 1
    return (n, ho, wo, co)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _forward(x, w, geo):
    return _call(FORWARD, _out_shape(x.shape, w.shape, geo), x, w, geo)


def _forward_fwd(x, w, geo):
    return _forward(x, w, geo), (x, w)


def _forward_bwd(geo, residuals, dy):
    x, w = residuals
    return _backward_data(dy, w, geo, x.shape), _backward_weights(x, dy, geo, w.shape)


_forward.defvjp(_forward_fwd, _forward_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _backward_data(dy, w, geo, x_shape):
    return _call(BACKWARD_DATA, x_shape, dy, w, geo)


def _backward_data_fwd(dy, w, geo, x_shape):
    return _backward_data(dy, w, geo, x_shape), (dy, w)


def _backward_data_bwd(geo, x_shape, residuals, c):
    dy, w = residuals  # dx = B_x^T dy: its gradient in dy is B(c, w), in w B_w^T(c, dy)
    return _forward(c, w, geo), _backward_weights(c, dy, geo, w.shape)


_backward_data.defvjp(_backward_data_fwd, _backward_data_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _backward_weights(x, dy, geo, w_shape):
    return _call(BACKWARD_WEIGHTS, w_shape, x, dy, geo)


def _backward_weights_fwd(x, dy, geo, w_shape):
    return _backward_weights(x, dy, geo, w_shape), (x, dy)


def _backward_weights_bwd(geo, w_shape, residuals, c):
    x, dy = residuals  # dw = B_w^T dy: its gradient in x is B_x^T(dy; c), in dy B(x, c)
    return _backward_data(dy, c, geo, x.shape), _forward(x, c, geo)


_backward_weights.defvjp(_backward_weights_fwd, _backward_weights_bwd)


# ---- lax.conv_general_dilated's signature ----------------------------------------------------


def _geometry(lhs, rhs, a) -> tuple | None:
    """The call's (strides, pads, dilation, groups), or None when oneDNN does not take it."""
    if lhs.ndim != 4 or rhs.ndim != 4 or a["dimension_numbers"] is None:
        return None
    if lhs.dtype != jnp.float32 or rhs.dtype != jnp.float32:
        return None
    if a["preferred_element_type"] not in (None, jnp.float32, np.float32):
        return None
    ones = (1, 1, 1, 1)
    if lax.conv_dimension_numbers(ones, ones, a["dimension_numbers"]) != (
        lax.conv_dimension_numbers(ones, ones, _NHWC)
    ):
        return None
    if tuple(a["lhs_dilation"] or (1, 1)) != (1, 1) or a["batch_group_count"] != 1:
        return None
    if 0 in lhs.shape or 0 in rhs.shape:
        return None
    strides = tuple(int(s) for s in a["window_strides"])
    dilation = tuple(int(d) for d in (a["rhs_dilation"] or (1, 1)))
    padding = a["padding"]
    if isinstance(padding, str):
        window = tuple((k - 1) * d + 1 for k, d in zip(rhs.shape[:2], dilation, strict=True))
        padding = lax.padtype_to_pads(lhs.shape[1:3], window, strides, padding)
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    if min(min(p) for p in pads) < 0:
        return None
    groups = int(a["feature_group_count"])
    if groups < 1 or lhs.shape[3] != rhs.shape[2] * groups or rhs.shape[3] % groups:
        return None
    return strides, pads, dilation, groups


def conv_general_dilated(lhs, rhs, *args, **kwargs):
    """`lax.conv_general_dilated` with the calls oneDNN takes (see the module docstring)
    computed by oneDNN, forward and backward; other calls go to XLA unchanged."""
    bound = _LAX_SIGNATURE.bind(lhs, rhs, *args, **kwargs)
    bound.apply_defaults()
    geo = _geometry(lhs, rhs, bound.arguments)
    if geo is None:
        return lax.conv_general_dilated(lhs, rhs, *args, **kwargs)
    return _forward(lhs, rhs, geo)


conv_general_dilated.onednn = True


# ---- batch normalisation (training) ----------------------------------------------------------


def batch_norm_applies(x) -> bool:
    """Whether oneDNN's training BatchNorm takes `x`: float32 [N, H, W, C]."""
    return x.ndim == 4 and x.dtype == jnp.float32 and 0 not in x.shape


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(x, scale, bias, epsilon: float):
    """x [N, H, W, C] float32 -> (y, batch mean [C], batch variance [C] over N*H*W), oneDNN's
    training BatchNorm; the gradient flows through y only (mean and variance feed the
    running statistics). Its backward pass is a custom call too, so it differentiates once."""
    return _bn_forward(x, scale, bias, epsilon)[0]


def _bn_call(target: str, x, *args, epsilon: float):
    """One of the BatchNorm custom calls: -> (an array shaped like x, two [C] vectors)."""
    ok, why = available()
    if not ok:
        raise ffi_build.Unavailable(why)
    vec = jax.ShapeDtypeStruct((x.shape[-1],), jnp.float32)
    out = (jax.ShapeDtypeStruct(x.shape, jnp.float32), vec, vec)
    return jax.ffi.ffi_call(target, out, vmap_method="sequential")(
        x, *args, eps=np.float32(epsilon)
    )


def _bn_forward(x, scale, bias, epsilon):
    f32 = lambda v: v.astype(jnp.float32)
    y, mean, var = _bn_call(BN_FORWARD, x, f32(scale), f32(bias), epsilon=epsilon)
    return (y, mean, var), (x, mean, var, scale)


def _bn_backward(epsilon, residuals, cotangents):
    x, mean, var, scale = residuals
    dy = cotangents[0].astype(jnp.float32)  # mean / variance: running statistics only
    dx, dscale, dbias = _bn_call(BN_BACKWARD, x, dy, mean, var, scale.astype(jnp.float32),
                                 epsilon=epsilon)  # fmt: skip
    return dx, dscale.astype(scale.dtype), dbias.astype(scale.dtype)


batch_norm_train.defvjp(_bn_forward, _bn_backward)


def main(argv=None) -> int:
    """`python -m cnnjax.ops.onednn`: builds the handler and prints its path (the set-up
    step); exit 1 with the reason when it cannot be built."""
    try:
        print(build())
    except ffi_build.Unavailable as e:
        print(f"cnnjax: oneDNN convolutions are unavailable (XLA's are used instead): {e}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
