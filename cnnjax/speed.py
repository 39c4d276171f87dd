"""Speed options of config group `train`: compute dtype, convolution implementation,
gradient accumulation, weight EMA and JAX's persistent compilation cache.

The trainer applies them; models only ever see plain `dtype=` and `conv=` fields.
"""

import logging
import os
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnjax.errors import ConfigError
from cnnjax.models.batch_norm import BatchNorm
from cnnjax.models.patch_conv import CONVS, conv_for_backend

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
CONV_CHOICES = ("auto", *CONVS)
CACHE_ENV = "CNNJAX_COMPILATION_CACHE_DIR"
# flax's BatchNorm, or cnnjax's with a hand-written backward (cnnjax/models/batch_norm.py).
BATCH_NORMS = {"flax": nn.BatchNorm, "cnnjax": BatchNorm}


def check(train_cfg, global_batch: int, num_devices: int) -> None:
    """ConfigError for a bad speed option, before anything compiles."""
    t = train_cfg
    if t.compute_dtype not in COMPUTE_DTYPES:
        raise ConfigError(
            f"train.compute_dtype '{t.compute_dtype}' is not one of {list(COMPUTE_DTYPES)}"
        )
    if t.conv not in CONV_CHOICES:
        raise ConfigError(f"train.conv '{t.conv}' is not one of {list(CONV_CHOICES)}")
    if t.batch_norm not in BATCH_NORMS:
        raise ConfigError(f"train.batch_norm '{t.batch_norm}' is not one of {list(BATCH_NORMS)}")
    if not 0 <= t.ema_decay < 1:
        raise ConfigError(f"train.ema_decay must be in [0, 1), got {t.ema_decay!r}")
    k = t.grad_accum_steps
    if not isinstance(k, int) or k < 1:
        raise ConfigError(f"train.grad_accum_steps must be a positive integer, got {k!r}")
    if global_batch % (k * num_devices):
        raise ConfigError(
            f"data.batch_size {global_batch} must be divisible by train.grad_accum_steps {k} "
            f"times the {num_devices} device(s), so that every micro-batch splits evenly"
        )


def apply_to_model(model, train_cfg, backend: str | None = None):
    """model -> a clone computing in train.compute_dtype with the chosen convolution.

    The conv is swapped only on models with a `conv` field (PatchConv has nn.Conv's exact
    parameters, so nothing else changes), a stock BatchNorm `norm` for train.batch_norm's
    (same variables); a model without `dtype` cannot run in bfloat16.
    """
    fields = type(model).__dataclass_fields__
    overrides = {}
    dtype = COMPUTE_DTYPES[train_cfg.compute_dtype]
    if "dtype" in fields:
        overrides["dtype"] = dtype
    elif dtype != jnp.float32:
        raise ConfigError(
            f"model '{type(model).__name__}' has no dtype field; it cannot use "
            f"train.compute_dtype '{train_cfg.compute_dtype}'"
        )
    if "conv" in fields and _uses_flax_conv(model.conv):
        overrides["conv"] = conv_for_backend(train_cfg.conv, backend)
    if "norm" in fields and any(model.norm is n for n in BATCH_NORMS.values()):
        overrides["norm"] = BATCH_NORMS[train_cfg.batch_norm]
    return model.clone(**overrides)


def _uses_flax_conv(conv) -> bool:
    """Only the stock nn.Conv (or PatchConv) is replaced; a custom conv a model was given is
    kept as it is."""
    return any(conv is c for c in CONVS.values())


def cache_dir(train_cfg, workdir) -> str | None:
    """The persistent compilation cache directory, or None when it is off: the config's,
    else $CNNJAX_COMPILATION_CACHE_DIR (e.g. one shared cache for a cluster's jobs), else
    `<workdir>/../.jax_cache`."""
    d = train_cfg.compilation_cache_dir or os.environ.get(CACHE_ENV, "")
    if d == "off":
        return None
    return str(Path(d).absolute() if d else Path(workdir).absolute().parent / ".jax_cache")


def enable_compilation_cache(train_cfg, workdir) -> str | None:
    """Points JAX's persistent cache at `cache_dir` so a restart compiles nothing.

    Every executable is cached (no minimum compile time). A directory already set for this
    process (JAX_COMPILATION_CACHE_DIR, or an earlier run in the same process) is kept: JAX
    reads the setting once. Returns the directory in use, or None.
    """
    path = cache_dir(train_cfg, workdir)
    if path is None:
        return jax.config.jax_compilation_cache_dir or None
    if not jax.config.jax_compilation_cache_dir:
        Path(path).mkdir(parents=True, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
        logging.getLogger("jax._src.compilation_cache").setLevel(logging.WARNING)
    return jax.config.jax_compilation_cache_dir
