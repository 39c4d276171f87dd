"""One call to look at a trained run in a notebook: `run = cnnjax.load("runs/resnet34")`.

Restores the newest (or a given) checkpoint onto the CPU, whatever devices trained it,
verified against its checksums, and reads the workdir's config.json and dataset_info.json
as data (no Python from a workdir is executed, and no dataset needs to be on disk).
`run.predict(images)` returns the task's typed result, `run.show(images)` its picture.
"""

import dataclasses
import functools
from pathlib import Path

import jax
import numpy as np

from cnnjax.config import workdir as wd
from cnnjax.data import open_sources
from cnnjax.engine.build import build_model, build_task
from cnnjax.engine.checkpointing import Checkpointer
from cnnjax.errors import ConfigError

CHUNK = 64  # predict runs fixed-size chunks: one compile whatever the number of images


@dataclasses.dataclass
class LoadedRun:
    model: object
    variables: dict
    config: object
    step: int
    info: object
    task: object

    def preprocess(self, images) -> dict:
        """uint8 images as stored ([N, H, W, C], one [H, W, C], or for 1-channel data also
        [N, H, W] / [H, W]) -> the model's inputs (`task.input_keys`, e.g. `image` resized
        and normalised as in evaluation: the host stage, then the task's device stage),
        without ground truth."""
        images = _as_batch(np.asarray(images), self.info.image_shape[-1])
        out = [self.task.eval_preprocess({"image": im, "index": i}) for i, im in enumerate(images)]
        host = {k: np.stack([o[k] for o in out]) for k in out[0]}
        host.update(index=np.arange(len(out), dtype=np.int64), mask=np.ones(len(out), np.float32))
        inputs = _chunked(self._device_stage, host)
        return {k: inputs[k] for k in self.task.input_keys}

    @functools.cached_property
    def _device_stage(self):
        return jax.jit(lambda b: self.task.device_preprocess(b, None))

    @functools.cached_property
    def _predict(self):
        return jax.jit(lambda v, b: self.task.predict(self.model.apply, v, b))

    @functools.cached_property
    def _features(self):
        return jax.jit(lambda v, x: self.model.apply(v, x, train=False)[1])

    def predict(self, images):
        """The task's `Prediction` (e.g. ClassPredictions: labels, probs, logits) for raw
        uint8 images, computed in chunks of CHUNK images."""
        batch = self.preprocess(images)
        outputs = _chunked(lambda b: self._predict(self.variables, b), batch)
        return self.task.Prediction(**outputs)

    def show(self, images):
        """A matplotlib Figure of the images with their predictions."""
        batch = self.preprocess(images)
        return self.task.visualize(batch, self.predict(images))

    def features(self, images) -> dict:
        """Named feature maps (`stem`, `stage1`, ..., `stride8`, ...) as numpy arrays."""
        x = self.preprocess(images)["image"]
        return jax.tree.map(np.asarray, self._features(self.variables, x))


def _as_batch(images: np.ndarray, channels: int) -> np.ndarray:
    """-> uint8 [N, H, W, C]; raises ValueError naming the expected shapes."""
    if channels == 1 and images.ndim in (2, 3) and images.shape[-1] != 1:
        images = images[..., None]  # [N, H, W] or [H, W] grey images without the channel axis
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.dtype != np.uint8 or images.shape[-1] != channels:
        raise ValueError(
            f"images must be uint8 [N, H, W, {channels}] or [H, W, {channels}]"
            + (" (or [N, H, W] for this 1-channel run)" if channels == 1 else "")
            + f", got {images.dtype} {images.shape}"
        )
    return images


def _chunked(fn, batch: dict) -> dict:
    """fn over fixed-size chunks of `batch` (the last one padded) -> numpy outputs [N, ...]."""
    n = len(next(iter(batch.values())))
    parts = []
    for start in range(0, n, CHUNK):
        chunk = {k: v[start : start + CHUNK] for k, v in batch.items()}
        m = len(next(iter(chunk.values())))
        padded = {k: np.concatenate([v, np.repeat(v[-1:], CHUNK - m, 0)]) for k, v in chunk.items()}
        parts.append(jax.tree.map(lambda x, m=m: np.asarray(x)[:m], fn(padded)))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def load(workdir, step: int | None = None, *, ema: bool = False) -> LoadedRun:
    """The run in `workdir` at checkpoint `step` (default: the newest that verifies), on the
    CPU. `ema=True` takes the weight EMA (runs trained with train.ema_decay > 0)."""
    workdir = Path(workdir)
    config = wd.load_config(workdir)
    info = wd.load_info(workdir)
    if info is None:  # a run written before dataset_info.json existed: ask the dataset
        info = open_sources(config.data)[2]
    task = build_task(config, info)
    model = build_model(config, task, speed=False)
    ckpt = Checkpointer(workdir / "checkpoints", create=False)
    try:
        found_step, state = ckpt.read(step)
    finally:
        ckpt.close()
    if ema and not state.get("ema_params"):
        raise ConfigError(f"{workdir} was trained without a weight EMA (train.ema_decay 0)")
    params, stats = ("ema_params", "ema_batch_stats") if ema else ("params", "batch_stats")
    cpu = jax.devices("cpu")[0]
    variables = {"params": state[params], "batch_stats": state.get(stats) or {}}
    variables = jax.tree.map(lambda x: jax.device_put(np.asarray(x), cpu), variables)
    return LoadedRun(model, variables, config, int(found_step), info, task)
