"""Convolution as im2col + matmul, a drop-in for `lax.conv_general_dilated` inside `nn.Conv`,
and the table of convolution modules the trainer picks from (`conv_module`).

XLA:CPU's backward pass for ordinary convolutions transposes activations to CHWN for the
weight gradient and re-materialised cheap producers into it; written as patches @ kernel the
whole step was matmuls that XLA:CPU runs well. Since the recompute barrier
(cnnjax/runtime/materialize.py) stops the re-materialisation, XLA's own convolution is as
fast or faster on every model measured, with less memory, so `train.conv='auto'` no longer
picks this; it stays as `train.conv='patch'`, an exact alternative (BENCHMARKS.md). `PatchConv` is
`nn.Conv` with this function plugged in, so parameter names, shapes and initialisers (and
therefore checkpoints and torchvision conversion) are exactly nn.Conv's. Cases it does not
cover (grouped/depthwise, lhs-dilated, non-2D, narrow) go to `lax.conv_general_dilated`
unchanged; dilated (atrous) kernels are covered, their taps read the input at dilated offsets.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from cnnjax.errors import ConfigError
from cnnjax.ops import onednn
from cnnjax.ops.depthwise import shifted_depthwise
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
    dilation = tuple(rhs_dilation or (1, 1))
    if (kh, kw) == (1, 1) and _zero_padding(padding):
        y = jnp.einsum("nhwc,cf->nhwf", lhs[:, ::sh, ::sw, :], rhs[0, 0], precision=precision,
                       preferred_element_type=preferred_element_type)  # fmt: skip
        return y
    patches = _patches(lhs, kh, kw, window_strides, padding, dilation)
    kernel = rhs.reshape(-1, cout)  # HWIO flattens in the patches' (kh, kw, C) order
    return jnp.matmul(
        patches, kernel, precision=precision, preferred_element_type=preferred_element_type
    )


def _patches(x, kh: int, kw: int, strides, padding, dilation=(1, 1)):
    """x [N, H, W, C] -> [N, H', W', kh * kw * C] in HWIO's (kh, kw, C) order; tap (i, j)
    reads the input at offset (i * dilation[0], j * dilation[1]) (atrous convolution).

    Built from kh * kw strided slices of the padded input: pure data movement whose gradient
    is pads and adds. (`lax.conv_general_dilated_patches` is itself a convolution with a
    one-hot kernel of kh * kw * C outputs; its gradient on CPU costs more than the conv.)
    """
    sh, sw = strides
    dh, dw = dilation
    eh, ew = (kh - 1) * dh + 1, (kw - 1) * dw + 1  # the dilated window
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(x.shape[1:3], (eh, ew), strides, padding)
    pads = tuple(tuple(p) for p in padding)
    x = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (*pads[0], 0), (*pads[1], 0), (0, 0, 0)))
    ho, wo = (x.shape[1] - eh) // sh + 1, (x.shape[2] - ew) // sw + 1
    cols = [
        x[:, i * dh : i * dh + sh * (ho - 1) + 1 : sh, j * dw : j * dw + sw * (wo - 1) + 1 : sw, :]
        for i in range(kh)
        for j in range(kw)
    ]
    return jnp.concatenate(cols, axis=-1)


PatchConv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)

# train.depthwise: how depthwise convolutions are computed (cnnjax/ops/depthwise.py).
DEPTHWISE_CHOICES = ("auto", "shifted", "xla")
_BASES = {
    "xla": lax.conv_general_dilated,
    "patch": conv_general_dilated,
    "onednn": onednn.conv_general_dilated,
}
_MADE: dict = {}


def conv_module(name: str, materialize: bool = False, depthwise: str = "xla"):
    """-> the nn.Conv to build with: `name` 'xla' (XLA's convolution), 'patch' (im2col for
    wide undilated ones) or 'onednn' (oneDNN through XLA FFI on CPU, cnnjax/ops/onednn.py;
    what it does not take goes to XLA), `materialize` puts the recompute barrier around each (see
    cnnjax/runtime/materialize.py), `depthwise` 'shifted' computes depthwise convolutions as
    shifted multiplies (cnnjax/ops/depthwise.py). Same parameters and values in every case;
    the same arguments return the same object."""
    if name not in _BASES:
        raise ValueError(f"conv implementation {name!r} is not one of {['auto', *_BASES]}")
    if depthwise not in ("shifted", "xla"):
        raise ValueError(f"depthwise implementation {depthwise!r} is not 'shifted' or 'xla'")
    key = (name, bool(materialize), depthwise)
    if key not in _MADE:
        if key == ("xla", False, "xla"):
            module = nn.Conv
        elif key == ("patch", False, "xla"):
            module = PatchConv
        else:
            fn = _BASES[name]
            if depthwise == "shifted":
                fn = shifted_depthwise(fn)
            if materialize:
                fn = materialized_conv(fn)
            module = functools.partial(nn.Conv, conv_general_dilated=fn)
        _MADE[key] = module
    return _MADE[key]


def is_conv_module(conv) -> bool:
    """Whether `conv` is one of the modules `conv_module` makes (stock nn.Conv included)."""
    return conv is nn.Conv or any(conv is m for m in _MADE.values())


CONVS = {name: conv_module(name) for name in _BASES}
# The same convolutions with the recompute barrier around them (cnnjax/runtime/materialize.py):
# the input and the gradient at the output are materialised once. Same parameters and values.
MATERIALIZED_CONVS = {name: conv_module(name, materialize=True) for name in CONVS}


def resolve_conv(setting: str, backend: str | None = None) -> str:
    """train.conv -> 'xla' | 'patch' | 'onednn'.

    'auto' is oneDNN on the CPU backend of a one-device process when its custom calls build
    here (measured faster on every benchmark model, BENCHMARKS.md "CPU: oneDNN
    convolutions"), else XLA's convolution: on GPU / TPU (cuDNN, XLA's TPU convolutions), and
    on several CPU devices, where an opaque custom call would be gathered onto every device.
    'onednn' is an error where it cannot be had (not CPU, or the library does not build; the
    message says why)."""
    choices = ("auto", *_BASES)
    if setting not in choices:
        raise ConfigError(f"train.conv is {setting!r}; expected one of {list(choices)}")
    backend = backend or jax.default_backend()
    if setting == "auto":
        if backend != "cpu" or jax.device_count() > 1:
            return "xla"
        ok, why = onednn.available()
        if not ok:
            _warn_onednn_unavailable(why)
        return "onednn" if ok else "xla"
    if setting == "onednn":
        if backend != "cpu":
            raise ConfigError(
                f"train.conv='onednn' needs the CPU backend (oneDNN runs as XLA:CPU custom "
                f"calls); this process runs on {backend!r}. Use 'auto' or 'xla'."
            )
        ok, why = onednn.available()
        if not ok:
            raise ConfigError(f"train.conv='onednn' but oneDNN is unavailable: {why}")
    return setting


@functools.cache
def _warn_onednn_unavailable(why: str) -> None:
    import logging

    logging.warning(
        "train.conv='auto': oneDNN convolutions are unavailable, so training uses XLA's "
        "(slower on CPU, same results): %s",
        why,
    )


def resolve_depthwise(setting: str, backend: str | None = None, conv: str = "xla") -> str:
    """train.depthwise -> 'shifted' | 'xla' ('xla': as the convolution `conv` computes it).
    'auto' is 'shifted' on CPU, where XLA has no depthwise kernel (measured in
    BENCHMARKS.md), unless the convolution is oneDNN's, which has one; elsewhere the
    convolution's own."""
    if setting not in DEPTHWISE_CHOICES:
        raise ValueError(f"depthwise implementation {setting!r} is not one of {DEPTHWISE_CHOICES}")
    if setting == "auto":
        cpu = (backend or jax.default_backend()) == "cpu"
        return "shifted" if cpu and conv != "onednn" else "xla"
    return setting


def conv_for_backend(
    name: str, backend: str | None = None, materialize: bool = False, depthwise: str = "auto"
):
    """'xla' | 'patch' | 'onednn' | 'auto' -> the conv module (see `resolve_conv`);
    `materialize` picks the variant behind the recompute barrier, `depthwise` ('auto' |
    'shifted' | 'xla') how depthwise convolutions are computed."""
    name = resolve_conv(name, backend)
    return conv_module(name, materialize, resolve_depthwise(depthwise, backend, name))
