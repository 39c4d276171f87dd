"""Precision and convolution rewrites of a built model (config group `train`'s speed options).

The trainer applies them; models only ever see plain `dtype=`, `conv=` and `norm=` fields.
A composite model (a detector or segmenter holding a registry backbone as a Module-valued
field) is rewritten all the way down, so its backbone computes like its head.
"""

import functools
import logging

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnjax.errors import ConfigError
from cnnjax.models.batch_norm import BatchNorm
from cnnjax.models.patch_conv import CONVS, conv_for_backend, is_conv_module, resolve_conv
from cnnjax.runtime import materialize as materialize_lib

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
CONV_CHOICES = ("auto", *CONVS)
# flax's BatchNorm, or cnnjax's with a hand-written backward (cnnjax/models/batch_norm.py),
# or cnnjax's with oneDNN's training kernels on CPU (cnnjax/ops/onednn.py); 'auto' picks.
BATCH_NORMS = {
    "flax": nn.BatchNorm,
    "cnnjax": BatchNorm,
    "onednn": functools.partial(BatchNorm, kernels="onednn"),
}
BATCH_NORM_CHOICES = ("auto", *BATCH_NORMS)


def resolve_batch_norm(setting: str, backend: str | None = None, conv: str = "auto") -> str:
    """train.batch_norm -> 'flax' | 'cnnjax' | 'onednn'. 'auto' follows the convolutions:
    'onednn' where `conv` (train.conv) resolves to oneDNN's (one CPU device, the library
    builds; measured faster, BENCHMARKS.md "CPU: oneDNN convolutions"), else 'cnnjax'.
    'onednn' is an error where it cannot be had, naming why."""
    if setting not in BATCH_NORM_CHOICES:
        raise ConfigError(
            f"train.batch_norm is {setting!r}; expected one of {list(BATCH_NORM_CHOICES)}"
        )
    if setting == "auto":
        return "onednn" if resolve_conv(conv, backend) == "onednn" else "cnnjax"
    if setting == "onednn":
        resolve_conv("onednn", backend)  # the same requirements, the same errors
    return setting


# train.materialize: the recompute barrier around each convolution (cnnjax/runtime/materialize.py).
MATERIALIZE_CHOICES = ("auto", "on", "off")
# train.depthwise (patch_conv.DEPTHWISE_CHOICES): depthwise convolutions as shifted
# multiplies (cnnjax/ops/depthwise.py) or XLA's grouped convolution; 'auto' = shifted on CPU.


def resolve_materialize(setting: str, backend: str | None = None) -> bool:
    """train.materialize -> whether the convolutions get the recompute barrier.

    'auto': on for the CPU backend (measured faster there, BENCHMARKS.md) when the custom call
    builds on this machine, with a warning saying why when it does not; off on GPU / TPU,
    where the op is not registered. 'on' is an error where it cannot be had; 'off' never.
    """
    backend = backend or jax.default_backend()
    if setting == "off":
        return False
    if setting not in MATERIALIZE_CHOICES:
        raise ConfigError(
            f"train.materialize is {setting!r}; expected one of {list(MATERIALIZE_CHOICES)}"
        )
    if backend != "cpu":
        if setting == "on":
            raise ConfigError(
                f"train.materialize='on' needs the CPU backend (the barrier is an XLA:CPU "
                f"custom call); this process runs on {backend!r}. Use 'auto' or 'off'."
            )
        return False
    ok, why = materialize_lib.available()
    if not ok:
        if setting == "on":
            raise ConfigError(f"train.materialize='on' but the barrier is unavailable: {why}")
        _warn_unavailable(why)
    return ok


@functools.cache
def _warn_unavailable(why: str) -> None:
    logging.warning(
        "train.materialize='auto': the XLA:CPU recompute barrier is unavailable, so training "
        "runs without it (slower on CPU, same results): %s",
        why,
    )


def apply_to_model(model, train_cfg, backend: str | None = None):
    """model -> a clone computing in train.compute_dtype with the chosen convolution.

    The conv is swapped only on models with a `conv` field (behind the recompute barrier when
    train.materialize resolves on) (every variant has nn.Conv's exact
    parameters, so nothing else changes), a stock BatchNorm `norm` for train.batch_norm's
    (same variables); a model without `dtype` cannot run in bfloat16. Fields holding unbound
    Modules (or tuples/lists of them), e.g. a composite's `backbone`, are rewritten the same
    way, recursively.
    """
    setting = getattr(train_cfg, "materialize", "auto")
    materialize = resolve_materialize(setting, backend)
    return _rewrite(model, train_cfg, backend, type(model).__name__, materialize, setting == "on")


def _rewrite(model, train_cfg, backend, path, materialize=False, forced=False):
    fields = type(model).__dataclass_fields__
    overrides = {}
    dtype = COMPUTE_DTYPES[train_cfg.compute_dtype]
    if "dtype" in fields:
        overrides["dtype"] = dtype
    elif dtype != jnp.float32:
        raise ConfigError(
            f"model '{path}' has no dtype field; it cannot use "
            f"train.compute_dtype '{train_cfg.compute_dtype}'"
        )
    if "conv" in fields and _uses_flax_conv(model.conv):
        # 'auto' leaves out the families measured slower with the barrier (RECOMPUTE_BARRIER =
        # False on the class: the depthwise nets) and oneDNN's convolutions (a custom call
        # reads its inputs from memory already: nothing to recompute); 'on' puts it everywhere.
        conv = resolve_conv(train_cfg.conv, backend)
        family = getattr(type(model), "RECOMPUTE_BARRIER", True)
        barrier = materialize and (forced or (family and conv != "onednn"))
        depthwise = getattr(train_cfg, "depthwise", "auto")
        overrides["conv"] = conv_for_backend(conv, backend, barrier, depthwise)
    if "norm" in fields and any(model.norm is n for n in BATCH_NORMS.values()):
        norm = resolve_batch_norm(train_cfg.batch_norm, backend, train_cfg.conv)
        overrides["norm"] = BATCH_NORMS[norm]
    for name in fields.keys() - {"parent", "name"}:
        value = getattr(model, name)
        if isinstance(value, nn.Module):
            overrides[name] = _rewrite(
                value, train_cfg, backend, f"{path}.{name}", materialize, forced
            )
        elif isinstance(value, tuple | list) and any(isinstance(v, nn.Module) for v in value):
            overrides[name] = type(value)(
                _rewrite(v, train_cfg, backend, f"{path}.{name}[{i}]", materialize, forced)
                if isinstance(v, nn.Module)
                else v
                for i, v in enumerate(value)
            )
    return model.clone(**overrides)


def _uses_flax_conv(conv) -> bool:
    """Only the stock nn.Conv (or one of its variants) is replaced; a custom conv a model was
    given is kept as it is."""
    return is_conv_module(conv)
