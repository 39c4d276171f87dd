"""One call to look at a trained run in a notebook: `run = cnnjax.load("runs/resnet34")`.

Restores the newest (or a given) checkpoint onto the CPU, whatever devices trained it,
and reads the workdir's config.json as data (no Python from a workdir is executed).
"""

import dataclasses
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax import models
from cnnjax.config import workdir as wd
from cnnjax.data import open_sources
from cnnjax.data.pipeline import preprocess_for
from cnnjax.engine import optim
from cnnjax.engine.checkpointing import Checkpointer, abstract_like
from cnnjax.errors import ConfigError
from cnnjax.tasks import classification as task


@dataclasses.dataclass
class Predictions:
    labels: np.ndarray  # [N] int
    probs: np.ndarray  # [N, K] float32
    logits: np.ndarray  # [N, K] float32


@dataclasses.dataclass
class LoadedRun:
    model: object
    variables: dict
    config: object
    step: int
    info: object

    def preprocess(self, images) -> np.ndarray:
        """uint8 images [N, H, W, C] or [H, W, C] (as stored) -> normalised float32 batch."""
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.dtype != np.uint8:
            raise ValueError(
                f"images must be uint8 [N, H, W, C] or [H, W, C], got {images.dtype} {images.shape}"
            )
        prep = preprocess_for(self.config.data, self.info, train=False)
        return np.stack(
            [prep({"image": im, "label": 0, "index": i})["image"] for i, im in enumerate(images)]
        )

    @functools.cached_property
    def _apply(self):
        return jax.jit(lambda v, x: self.model.apply(v, x, train=False))

    def predict(self, images) -> Predictions:
        """Class predictions for raw uint8 images (resized and normalised like eval data)."""
        x = self.preprocess(images)
        logits, _ = self._apply(self.variables, x)
        logits = np.asarray(logits)
        probs = np.asarray(jax.nn.softmax(logits, -1))
        return Predictions(labels=logits.argmax(-1), probs=probs, logits=logits)

    def features(self, images) -> dict:
        """Named feature maps (`stem`, `stage1`, ..., `pre_logits`) as numpy arrays."""
        _, feats = self._apply(self.variables, self.preprocess(images))
        return jax.tree.map(np.asarray, feats)


def load(workdir, step: int | None = None) -> LoadedRun:
    workdir = Path(workdir)
    config = wd.load_config(workdir)
    _, _, info = open_sources(config.data)
    model = models.create(config.model.name, num_classes=info.num_classes, **config.model.kwargs)
    cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    shape = (config.data.image_size, config.data.image_size, info.image_shape[-1])
    tx, _ = optim.create(config.optim, 1)
    template = jax.eval_shape(
        lambda: task.create_state(
            model, tx, jax.random.PRNGKey(0), shape, ema=config.train.get("ema_decay", 0) > 0
        )
    )
    ckpt = Checkpointer(workdir / "checkpoints", keep=1_000_000, best_metric="accuracy")
    try:
        step = ckpt.latest_step() if step is None else step
        if step is None:
            raise ConfigError(f"{workdir} has no checkpoints yet")
        state = ckpt.restore_state(step, abstract_like(template, cpu))
    finally:
        ckpt.manager.close()
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    variables = jax.tree.map(lambda x: jnp.asarray(x), variables)
    return LoadedRun(model=model, variables=variables, config=config, step=int(step), info=info)
