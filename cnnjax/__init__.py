"""cnnjax: the classic convolutional-network curriculum in JAX/Flax."""

from cnnjax.runtime import malloc as _malloc

# `python -m cnnjax.<tool>` restarts itself with malloc on transparent huge pages when it was
# started without (cnnjax/runtime/malloc.py); before anything else is loaded.
_malloc.reexec_if_needed()

from cnnjax.runtime import xla_env as _xla_env  # noqa: E402

_xla_env.apply_cpu_defaults()

__version__ = "0.1.0"


def load(workdir, step=None):
    """Loads a trained run for notebooks (cnnjax.notebook.load): `.model`, `.variables`,
    `.config`, `.task`, `.predict(images)` (the task's typed result), `.show(images)` (a
    figure) and `.features(images)`; on the CPU, without the dataset on disk."""
    from cnnjax.notebook import load as _load

    return _load(workdir, step=step)
