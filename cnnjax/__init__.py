"""cnnjax: the classic convolutional-network curriculum in JAX/Flax."""

from cnnjax.runtime import xla_env as _xla_env

_xla_env.apply_cpu_defaults()

__version__ = "0.1.0"


def load(workdir, step=None):
    """Loads a trained run for notebooks (cnnjax.notebook.load): `.model`, `.variables`,
    `.config`, `.task`, `.predict(images)` (the task's typed result), `.show(images)` (a
    figure) and `.features(images)`; on the CPU, without the dataset on disk."""
    from cnnjax.notebook import load as _load

    return _load(workdir, step=step)
