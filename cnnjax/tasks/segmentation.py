"""Semantic segmentation: per-pixel cross-entropy with an ignore index, exact confusion-matrix
metrics (mIoU, pixel / mean accuracy, fwIoU), per-pixel class predictions and overlays.

The class map is the record's `mask_key` feature ([H, W] or [H, W, 1] integers), optionally
remapped by `mask_values` (stored value v -> class mask_values[v], 255 = ignore; e.g. the
Oxford-IIIT Pet trimap 1 pet / 2 background / 3 border -> (255, 1, 0, 255)). The mask moves
with the image under every geometric augmentation on the host (`cnnjax.data.geometry`:
scale jitter, crop with padding, flips; padding is ignored), which batches uint8 images;
the pixel-only ones (colour jitter, blur, noise) and normalisation run on device
(`device_preprocess`).
"""

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax.data import device_augment as DA
from cnnjax.data import geometry
from cnnjax.data import transforms as T
from cnnjax.data.features import Feature
from cnnjax.errors import ConfigError
from cnnjax.metrics.segmentation import ConfusionMetrics, confusion_matrix
from cnnjax.tasks import plots
from cnnjax.tasks.base import Loss, Task, apply_model
from cnnjax.tasks.classification import require_images


@dataclasses.dataclass
class SegmentationPredictions:
    """`predict`'s result: classes [N, H, W] int, probs [N, H, W, K] float32."""

    classes: np.ndarray
    probs: np.ndarray


def class_count(info, mask_key: str) -> int | None:
    """The dataset's number of segmentation classes: its metadata's class names, or the
    mask feature's class count; None if it does not say."""
    names = info.metadata.get("segmentation_class_names")
    if names:
        return len(names)
    f = info.features.get(mask_key)
    return f.num_classes if f is not None else None


@dataclasses.dataclass(frozen=True)
class Segmentation(Task):
    """Per-pixel classification of `image` into `num_classes` classes."""

    num_classes: int = 0  # 0 = the dataset's (metadata segmentation_class_names)
    ignore_index: int = 255
    mask_key: str = "segmentation"
    mask_values: tuple = ()  # stored value -> class (255 = ignore); () = as stored
    scale_jitter: float = 0.0  # > 0: training images rescaled by a factor in [1-s, 1+s]

    name: ClassVar[str] = "segmentation"
    METRICS: ClassVar[dict] = {
        "miou": "max", "pixel_accuracy": "max", "mean_accuracy": "max", "fwiou": "max",
        "loss": "min",
    }  # fmt: skip
    best_metric: ClassVar[str] = "miou"
    progress_keys: ClassVar[tuple] = ("loss", "pixel_accuracy")
    Prediction: ClassVar[type] = SegmentationPredictions

    def __post_init__(self):
        super().__post_init__()
        stored = class_count(self.info, self.mask_key)
        if self.num_classes <= 0 and not stored:
            raise ConfigError(
                f"dataset '{self.info.name}' does not say how many segmentation classes it has;"
                " set task.kwargs.num_classes"
            )
        if self.num_classes > 0 and stored and not self.mask_values and self.num_classes != stored:
            raise ConfigError(
                f"task.kwargs.num_classes {self.num_classes} does not match dataset "
                f"'{self.info.name}', which has {stored} segmentation classes"
            )
        if not 0 <= self.scale_jitter < 1:
            raise ConfigError(
                f"task.kwargs.scale_jitter must be in [0, 1), got {self.scale_jitter}"
            )
        if self.ignore_index < self.classes:
            raise ConfigError(
                f"task.kwargs.ignore_index {self.ignore_index} is a class id (< {self.classes})"
            )

    @classmethod
    def check_info(cls, info) -> None:
        require_images(cls.name, info)

    @property
    def classes(self) -> int:
        return self.num_classes if self.num_classes > 0 else class_count(self.info, self.mask_key)

    def summary(self) -> str:
        return f"{self.classes} classes, ignore {self.ignore_index}"

    def features(self) -> dict:
        s, c = self.image_size, self.info.image_shape[-1]
        return {
            "image": Feature((s, s, c), "uint8", 0, 0, 256),
            "segmentation": Feature((s, s), "int32", self.ignore_index, 0, self.classes),
        }

    # ---- data ---------------------------------------------------------------------------
    def _mask(self, record: dict, index: int, image_hw, training: bool) -> np.ndarray:
        if self.mask_key not in record:
            if training:
                raise ValueError(f"record {index}: no '{self.mask_key}' mask")
            return np.full(image_hw, self.ignore_index, np.int32)  # notebook input: no truth
        mask = np.asarray(record[self.mask_key])
        if mask.ndim == 3 and mask.shape[-1] == 1:
            mask = mask[..., 0]
        if mask.shape != tuple(image_hw):
            raise ValueError(
                f"record {index}: mask '{self.mask_key}' is {mask.shape}, its image {image_hw}"
            )
        mask = mask.astype(np.int64)
        if self.mask_values:
            table = np.asarray(self.mask_values, np.int64)
            if mask.min() < 0 or mask.max() >= len(table):
                raise ValueError(
                    f"record {index}: mask value {int(mask.max())} has no entry in "
                    f"task.kwargs.mask_values (length {len(table)})"
                )
            mask = table[mask]
        bad = (mask != self.ignore_index) & ((mask < 0) | (mask >= self.classes))
        if bad.any():
            raise ValueError(
                f"record {index}: mask value {int(mask[bad][0])} outside [0, {self.classes}) "
                f"and not the ignore index {self.ignore_index}"
            )
        return mask.astype(np.int32)

    def preprocess(self, record: dict, rng) -> dict:
        index = int(record["index"])
        T.check_image(record["image"], index, self.info.image_shape[-1])
        image = record["image"]
        mask = self._mask(record, index, image.shape[:2], training=rng is not None)
        ex = {"image": image, "segmentation": mask}
        ex = _center_square(ex, self.ignore_index)
        if rng is not None:
            ex = self._augment_geometry(ex, rng)
        ex = geometry.resize(ex, self.image_size, self.image_size)
        return {
            "image": np.ascontiguousarray(ex["image"], np.uint8),
            "segmentation": np.ascontiguousarray(ex["segmentation"], np.int32),
        }

    def device_preprocess(self, batch: dict, rng) -> dict:
        """uint8 images (already moved with their masks on the host) -> normalised float32;
        in training first colour jitter, blur and noise, which leave the masks alone."""
        norm = {"size": self.image_size, "mean": self.info.mean, "std": self.info.std}
        if rng is None:
            return {**batch, "image": DA.eval_batch(batch["image"], **norm)}
        pixels_only = dataclasses.replace(self.augment, crop_padding=0, flip=False, vflip=False)
        return {**batch, "image": DA.augment_batch(batch["image"], rng, pixels_only, **norm)}

    def _augment_geometry(self, ex: dict, rng) -> dict:
        fill = self.ignore_index
        if self.scale_jitter > 0:
            s = self.scale_jitter
            ex = geometry.random_scale(ex, 1 - s, 1 + s, rng, mask_fill=fill)
        if self.augment.crop_padding > 0:
            ex = geometry.random_crop_with_padding(
                ex, self.augment.crop_padding, rng, mask_fill=fill
            )
        if self.augment.flip or self.augment.vflip:
            ex = geometry.random_flip(
                ex, rng, horizontal=self.augment.flip, vertical=self.augment.vflip
            )
        return ex

    # ---- model --------------------------------------------------------------------------
    def model_kwargs(self) -> dict:
        return {"num_classes": self.classes}

    def _pixel_terms(self, logits, batch):
        """-> (cross-entropy per pixel [B, H, W], valid pixels [B, H, W] float32)."""
        labels = batch["segmentation"]
        valid = (labels != self.ignore_index) & (batch["mask"][:, None, None] > 0)
        safe = jnp.where(valid, labels, 0)
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        ce = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
        return ce * valid, valid.astype(jnp.float32)

    def _logits(self, apply_fn, variables, image, *, train, rng=None):
        (logits, _), updates = apply_model(apply_fn, variables, image, train=train, rng=rng)
        if logits.shape[1:3] != image.shape[1:3]:
            raise ConfigError(
                f"the model's outputs are {logits.shape[1]}x{logits.shape[2]} for "
                f"{image.shape[1]}x{image.shape[2]} images; a segmentation model must upsample "
                "its scores to the input size"
            )
        return logits, updates

    def loss(self, apply_fn, variables, batch, rng) -> Loss:
        logits, updates = self._logits(apply_fn, variables, batch["image"], train=True, rng=rng)
        ce, valid = self._pixel_terms(logits, batch)
        correct = (jnp.argmax(logits, -1) == batch["segmentation"]) * valid
        terms = {"pixel_accuracy": (correct.sum(), valid.sum())}
        return Loss(ce.sum(), valid.sum(), terms, updates)

    # ---- evaluation ---------------------------------------------------------------------
    def eval_outputs(self, apply_fn, variables, batch) -> dict:
        logits, _ = self._logits(apply_fn, variables, batch["image"], train=False)
        ce, valid = self._pixel_terms(logits, batch)
        predicted = jnp.argmax(logits, -1)
        return {
            "confusion": confusion_matrix(
                batch["segmentation"], predicted, self.classes, self.ignore_index
            ),
            "loss_sum": ce.sum((1, 2)),
            "pixels": valid.sum((1, 2)),
            "mask": batch["mask"],
        }

    def metric(self) -> ConfusionMetrics:
        return ConfusionMetrics()

    def predict(self, apply_fn, variables, batch) -> dict:
        logits, _ = self._logits(apply_fn, variables, batch["image"], train=False)
        return {"classes": jnp.argmax(logits, -1), "probs": jax.nn.softmax(logits, -1)}

    def visualize(self, batch: dict, prediction: SegmentationPredictions):
        """Rows of examples: the image, the ground truth (when the batch has it) and the
        prediction, each class map drawn over the image; ignored pixels white; a legend."""
        images = plots.denormalize(batch["image"], self.info.mean, self.info.std)
        maps = [("prediction", prediction.classes)]
        if "segmentation" in batch:
            maps.insert(0, ("ground truth", batch["segmentation"]))
        n = len(images)
        fig, axes = plots.figure(n, 1 + len(maps), cell=1.8)
        names = self.info.metadata.get("segmentation_class_names") or [
            str(i) for i in range(self.classes)
        ]
        for i in range(n):
            plots.show_image(axes[i, 0], images[i], "image" if i == 0 else "")
            for j, (title, m) in enumerate(maps, start=1):
                overlay = plots.class_overlay(images[i], m[i], self.classes, self.ignore_index)
                plots.show_image(axes[i, j], overlay, title if i == 0 else "")
        plots.class_legend(fig, names, self.classes)
        return fig


def _center_square(ex: dict, fill: int) -> dict:
    """The central square of a non-square example (image and mask together)."""
    h, w = ex["image"].shape[:2]
    if h == w:
        return ex
    s = min(h, w)
    return geometry.crop(ex, (h - s) // 2, (w - s) // 2, s, s, mask_fill=fill)
