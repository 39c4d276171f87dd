"""JAX's persistent compilation cache: a restarted or resumed run compiles nothing."""

import logging
import os
from pathlib import Path

import jax

CACHE_ENV = "CNNJAX_COMPILATION_CACHE_DIR"


def cache_dir(setting: str, workdir) -> str | None:
    """The persistent compilation cache directory, or None when it is off: `setting`
    (train.compilation_cache_dir), else $CNNJAX_COMPILATION_CACHE_DIR (e.g. one shared cache
    for a cluster's jobs), else `<workdir>/../.jax_cache`."""
    d = setting or os.environ.get(CACHE_ENV, "")
    if d == "off":
        return None
    return str(Path(d).absolute() if d else Path(workdir).absolute().parent / ".jax_cache")


def enable(setting: str, workdir) -> str | None:
    """Points JAX's persistent cache at `cache_dir` so a restart compiles nothing.

    Every executable is cached (no minimum compile time). A directory already set for this
    process (JAX_COMPILATION_CACHE_DIR, or an earlier run in the same process) is kept: JAX
    reads the setting once. Returns the directory in use, or None.
    """
    path = cache_dir(setting, workdir)
    if path is None:
        return jax.config.jax_compilation_cache_dir or None
    if not jax.config.jax_compilation_cache_dir:
        Path(path).mkdir(parents=True, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
        logging.getLogger("jax._src.compilation_cache").setLevel(logging.WARNING)
    return jax.config.jax_compilation_cache_dir
