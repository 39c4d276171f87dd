"""The table of convolution implementations the trainer picks from (`conv_module`,
`resolve_conv`): XLA's convolution, oneDNN's (cnnjax/ops/onednn.py), each optionally behind
the recompute barrier (cnnjax/runtime/materialize.py) and with depthwise convolutions as
shifted multiplies (cnnjax/ops/depthwise.py). Every variant is `nn.Conv` with another
`conv_general_dilated` plugged in, so parameter names, shapes and initialisers (and
therefore checkpoints and torchvision conversion) are exactly nn.Conv's.

(The module's name is historical: it held `PatchConv`, an im2col convolution that was the
CPU default before the recompute barrier. With the barrier XLA's convolution beat it on every
model measured, and oneDNN's beats both (BENCHMARKS.md, "im2col re-decided", "oneDNN
convolutions"), so it was removed in session 9.)
"""

import functools

import flax.linen as nn
import jax
from jax import lax

from cnnjax.errors import ConfigError
from cnnjax.ops import onednn
from cnnjax.ops.depthwise import shifted_depthwise
from cnnjax.runtime.materialize import materialized_conv

# train.depthwise: how depthwise convolutions are computed (cnnjax/ops/depthwise.py).
DEPTHWISE_CHOICES = ("auto", "shifted", "xla")
_BASES = {"xla": lax.conv_general_dilated, "onednn": onednn.conv_general_dilated}
_MADE: dict = {}


def conv_module(name: str, materialize: bool = False, depthwise: str = "xla"):
    """-> the nn.Conv to build with: `name` 'xla' (XLA's convolution) or 'onednn' (oneDNN
    through XLA FFI on CPU, cnnjax/ops/onednn.py; what it does not take goes to XLA),
    `materialize` puts the recompute barrier around each (see
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
    """train.conv -> 'xla' | 'onednn'.

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
    """'xla' | 'onednn' | 'auto' -> the conv module (see `resolve_conv`);
    `materialize` picks the variant behind the recompute barrier, `depthwise` ('auto' |
    'shifted' | 'xla') how depthwise convolutions are computed."""
    name = resolve_conv(name, backend)
    return conv_module(name, materialize, resolve_depthwise(depthwise, backend, name))
