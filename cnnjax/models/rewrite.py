"""Precision and convolution rewrites of a built model (config group `train`'s speed options).

The trainer applies them; models only ever see plain `dtype=`, `conv=` and `norm=` fields.
A composite model (a detector or segmenter holding a registry backbone as a Module-valued
field) is rewritten all the way down, so its backbone computes like its head.
"""

import flax.linen as nn
import jax.numpy as jnp

from cnnjax.errors import ConfigError
from cnnjax.models.batch_norm import BatchNorm
from cnnjax.models.patch_conv import CONVS, conv_for_backend

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
CONV_CHOICES = ("auto", *CONVS)
# flax's BatchNorm, or cnnjax's with a hand-written backward (cnnjax/models/batch_norm.py).
BATCH_NORMS = {"flax": nn.BatchNorm, "cnnjax": BatchNorm}


def apply_to_model(model, train_cfg, backend: str | None = None):
    """model -> a clone computing in train.compute_dtype with the chosen convolution.

    The conv is swapped only on models with a `conv` field (PatchConv has nn.Conv's exact
    parameters, so nothing else changes), a stock BatchNorm `norm` for train.batch_norm's
    (same variables); a model without `dtype` cannot run in bfloat16. Fields holding unbound
    Modules (or tuples/lists of them), e.g. a composite's `backbone`, are rewritten the same
    way, recursively.
    """
    return _rewrite(model, train_cfg, backend, type(model).__name__)


def _rewrite(model, train_cfg, backend, path: str):
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
        overrides["conv"] = conv_for_backend(train_cfg.conv, backend)
    if "norm" in fields and any(model.norm is n for n in BATCH_NORMS.values()):
        overrides["norm"] = BATCH_NORMS[train_cfg.batch_norm]
    for name in fields.keys() - {"parent", "name"}:
        value = getattr(model, name)
        if isinstance(value, nn.Module):
            overrides[name] = _rewrite(value, train_cfg, backend, f"{path}.{name}")
        elif isinstance(value, tuple | list) and any(isinstance(v, nn.Module) for v in value):
            overrides[name] = type(value)(
                _rewrite(v, train_cfg, backend, f"{path}.{name}[{i}]")
                if isinstance(v, nn.Module)
                else v
                for i, v in enumerate(value)
            )
    return model.clone(**overrides)


def _uses_flax_conv(conv) -> bool:
    """Only the stock nn.Conv (or PatchConv) is replaced; a custom conv a model was given is
    kept as it is."""
    return any(conv is c for c in CONVS.values())
