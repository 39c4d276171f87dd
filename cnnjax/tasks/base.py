"""The task interface: everything about a kind of problem that the one engine does not know.

A task is a frozen dataclass built from its name, the dataset's `DataInfo`, the image size
and the augmentations (`cnnjax.tasks.create`), never from a ConfigDict. It owns

- the data side: `check_info` (can this dataset be used?), the per-example feature spec
  of the host batch (`features`), per-example `preprocess` on the host for training and
  evaluation, and `device_preprocess`, the batch-level stage the engine runs on device at
  the start of every jitted step (host batch -> model inputs: e.g. uint8 -> resized,
  augmented, normalised float32, with a key from the seed and the step in training). What
  must see one example at a time (decoding, variable-size crops, box and mask geometry)
  stays on the host; cheap per-pixel work belongs on the device;
- the model side: what the model is built with (`model_kwargs`), its inputs for init
  (`init_inputs`), and the `loss`, which calls the model itself (a two-stage detector needs
  the ground truth in its forward) and returns a numerator and a denominator, so that
  micro-batch accumulation stays exact whatever the divisor (examples, pixels, boxes);
- evaluation: per-example `eval_outputs` of a batch, the host `metric()` accumulator that
  turns them into metrics, `METRICS` (name -> 'max' | 'min'), `best_metric`, and the keys
  the progress line shows (`progress_keys`);
- looking at results: `predict` (jittable, per-example arrays) and its typed result
  (`Prediction`), and `visualize` (a matplotlib figure, written as PNG).

`loss`, `eval_outputs`, `predict` and `visualize` see the model's inputs (a batch after
`device_preprocess`).

The engine (`cnnjax.engine`) owns TrainState, the train step (accumulation, EMA, the
non-finite guard, norms), the evaluation loop over padded batches, checkpoints, logging and
resume, and never imports a task by name.
"""

import abc
import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import jax
import numpy as np

from cnnjax.data.features import Feature
from cnnjax.data.sources import DataInfo
from cnnjax.data.transforms import Augment
from cnnjax.errors import ConfigError


class Loss(NamedTuple):
    """What `Task.loss` returns (all on device, inside the jitted step).

    numerator, denominator: [] float32; the training loss is numerator / denominator and
    the gradient is that of numerator, divided by the denominator summed over micro-batches.
    terms: named metrics as (sum, count) pairs of [] float32 (e.g. 'accuracy': (correct,
    examples), 'loss_xy': (sum, matched boxes)); the engine logs sum / count, summed exactly
    over micro-batches and log windows. `loss` is added by the engine.
    updates: the model's updated mutable collections (e.g. {'batch_stats': ...}).
    """

    numerator: Any
    denominator: Any
    terms: dict
    updates: dict


def apply_model(apply_fn: Callable, variables: dict, *args, train: bool, rng=None, **kwargs):
    """Runs the model -> (outputs, updated mutable collections). In training BatchNorm
    statistics are mutable and `rng` feeds dropout; in evaluation nothing is mutable."""
    if not train:
        return apply_fn(variables, *args, train=False, **kwargs), {}
    out, updates = apply_fn(
        variables, *args, train=True, mutable=["batch_stats"], rngs={"dropout": rng}, **kwargs
    )
    return out, {"batch_stats": updates.get("batch_stats", {})}


@dataclasses.dataclass(frozen=True)
class Task(abc.ABC):
    """Base of every task; subclasses add their options as dataclass fields (`task.kwargs`)."""

    info: DataInfo
    image_size: int = 32
    augment: Augment = Augment()

    name: ClassVar[str]
    input_keys: ClassVar[tuple[str, ...]] = ("image",)  # what `predict` reads of a batch
    METRICS: ClassVar[dict[str, str]]  # eval metric -> 'max' | 'min' (better direction)
    best_metric: ClassVar[str]
    progress_keys: ClassVar[tuple[str, ...]]
    Prediction: ClassVar[type]  # a dataclass whose fields are `predict`'s output keys
    mixes: ClassVar[bool] = False  # True: mixup / cutmix (data.aug) make sense for the task

    def __post_init__(self):
        self.check_info(self.info)
        if not isinstance(self.image_size, int) or self.image_size < 1:
            raise ConfigError(f"data.image_size must be a positive integer, got {self.image_size}")
        mixing = {k: getattr(self.augment, k) for k in ("mixup_alpha", "cutmix_alpha")}
        if not self.mixes and any(mixing.values()):
            raise ConfigError(
                f"data.aug {mixing}: task '{self.name}' does not mix examples (classification "
                "does); set both to 0"
            )

    # ---- data -------------------------------------------------------------------------
    @classmethod
    @abc.abstractmethod
    def check_info(cls, info: DataInfo) -> None:
        """ConfigError naming what is missing if this task cannot use the dataset."""

    @abc.abstractmethod
    def features(self) -> dict[str, Feature]:
        """The preprocessed example: key -> Feature (shape without the batch axis)."""

    @abc.abstractmethod
    def preprocess(self, record: dict, rng: np.random.Generator | None) -> dict:
        """A stored record (with `index`) -> an example fitting `features()`. `rng` is given
        in training (random augmentation) and None in evaluation (deterministic). Without
        `rng` a record may hold only an image (notebook inputs): ground-truth features then
        take their pad values."""

    def device_preprocess(self, batch: dict, rng) -> dict:
        """Host batch (arrays [B, ...] fitting `features()`, with `index` and `mask`) -> the
        model's inputs, traced inside the jitted steps: `rng` is a PRNG key in training
        (random augmentation; the same key for the same run seed and step) and None in
        evaluation and prediction (deterministic). Must keep the batch axis and its order.
        By default the host did everything: the batch as it is."""
        return batch

    def train_preprocess(self, record: dict, rng: np.random.Generator) -> dict:
        return self.preprocess(record, rng)

    def eval_preprocess(self, record: dict, rng=None) -> dict:
        return self.preprocess(record, None)

    def summary(self) -> str:
        """One line for the start-up summary (e.g. '10 classes')."""
        return self.name

    # ---- model ------------------------------------------------------------------------
    @abc.abstractmethod
    def model_kwargs(self) -> dict:
        """What the registry model is built with, besides config.model.kwargs."""

    def init_inputs(self) -> tuple:
        """Positional inputs of `model.init`: zeros shaped like the `image` of a batch of one
        after `device_preprocess` (evaluation mode; only its shape is computed, so this may
        be called inside a trace)."""
        batch = {k: f.empty()[None] for k, f in self.features().items()}
        batch.update(index=np.full(1, -1, np.int64), mask=np.zeros(1, np.float32))
        image = jax.eval_shape(lambda b: self.device_preprocess(b, None)["image"], batch)
        return (np.zeros(image.shape, image.dtype),)

    @abc.abstractmethod
    def loss(self, apply_fn: Callable, variables: dict, batch: dict, rng) -> Loss:
        """Training loss of a (micro-)batch; padded examples (mask 0) contribute nothing."""

    # ---- evaluation -------------------------------------------------------------------
    @abc.abstractmethod
    def eval_outputs(self, apply_fn: Callable, variables: dict, batch: dict) -> dict:
        """Per-example arrays [B, ...] (with `mask`) that `metric()` accumulates."""

    @abc.abstractmethod
    def metric(self):
        """A fresh `cnnjax.metrics.accumulate.Accumulator` of `eval_outputs`."""

    # ---- looking at results -----------------------------------------------------------
    @abc.abstractmethod
    def predict(self, apply_fn: Callable, variables: dict, batch: dict) -> dict:
        """Per-example prediction arrays [B, ...] for a preprocessed batch (jittable)."""

    @abc.abstractmethod
    def visualize(self, batch: dict, prediction):
        """A matplotlib Figure of a preprocessed batch (numpy, [N, ...]; ground truth drawn
        when the batch has it) next to its `Prediction`."""
