"""Shared test set-up: a private tfds data dir and helpers for CLI runs."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _data_dir(tmp_path_factory):
    """Every test (and every subprocess it starts) reads tfds data from one private dir."""
    if "CNNJAX_TEST_DATA_DIR" in os.environ:
        path = os.environ["CNNJAX_TEST_DATA_DIR"]
    else:
        path = str(tmp_path_factory.mktemp("tfds"))
    os.environ["CNNJAX_DATA_DIR"] = path
    # One persistent compilation cache for the session's training subprocesses: each test's
    # run of the same smoke config compiles once, not once per test (configs that name a
    # cache dir, or 'off', still get their own).
    os.environ.setdefault("CNNJAX_COMPILATION_CACHE_DIR", str(tmp_path_factory.mktemp("jax_cache")))
    return path


def run_cli(module: str, *args: str, timeout: int = 600, env: dict | None = None):
    """Runs `python -m module args` from the repo root -> CompletedProcess (text)."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def load_config(name: str, arg: str | None = None, overrides=()):
    """configs/NAME.py with `arg` and overrides, as the train CLI loads it."""
    from cnnjax.config import files

    return files.load(ROOT / name, overrides, arg=arg)


def classification_task(
    num_classes: int = 10, image_size: int = 16, channels: int = 3, *, device_stage=False, **kw
):
    """A classification task on a synthetic dataset description (no data on disk).

    By default for tests of the step's math (loss, accumulation, precision, aux heads): its
    batches are already the model's inputs, float images of any size, which its
    `device_preprocess` passes on unchanged (the real stage, uint8 -> augmented normalised
    floats, is tested in test_device_augment.py, test_data.py and through the trainer).
    `device_stage=True`: the task exactly as the trainer builds it."""
    import dataclasses

    from cnnjax import tasks
    from cnnjax.data.sources import DataInfo
    from cnnjax.tasks.classification import Classification

    @dataclasses.dataclass(frozen=True)
    class ModelInputs(Classification):
        def device_preprocess(self, batch, rng):
            return batch

    info = DataInfo.synthetic((image_size, image_size, channels), num_classes)
    if device_stage:
        return tasks.create("classification", info, image_size=image_size, **kw)
    tasks.create("classification", info, image_size=image_size, **kw)  # the same checks
    return ModelInputs(info=info, image_size=image_size, **kw)


def classification_step(num_classes: int = 10, **kw):
    """The engine's train step with a classification task (what the trainer jits)."""
    import functools

    from cnnjax.engine.step import train_step

    task = classification_task(num_classes, **{k: v for k, v in kw.items() if k in _TASK_KW})
    rest = {k: v for k, v in kw.items() if k not in _TASK_KW}
    return functools.partial(train_step, task=task, **rest)


def classification_eval(num_classes: int = 10):
    """The engine's eval step with a classification task: per-example outputs [B]."""
    import functools

    from cnnjax.engine.step import eval_step

    return functools.partial(eval_step, task=classification_task(num_classes))


def image_inputs(shape) -> tuple:
    """Init inputs of an image model: a batch of one zero image of `shape` (H, W, C)."""
    import numpy as np

    return (np.zeros((1, *shape), np.float32),)


_TASK_KW = ("label_smoothing", "aux_loss_weight", "image_size", "channels")
