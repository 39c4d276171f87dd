"""Object detection: what every detector shares (boxes in the input pipeline, box-aware
augmentation, padded ground truth, post-processing, exact COCO / VOC metrics, pictures).

A detector is a subclass of `Detection` that adds its loss (`loss`) and its raw-output
decoding (`detect`); the YOLO v1, SSD and two-stage (R-CNN ... Faster R-CNN) tasks are.

Data. A record holds `image` [H, W, C] uint8 and its objects: boxes under `boxes_key`
(normalised (y1, x1, y2, x2) in [0, 1] with pixel-edge semantics, as `digits_scenes` and
tfds' BBoxFeature store them) and classes under `classes_key` (ints in [0, K)); nested tfds
features are read by their flattened path ('objects/bbox'). Boxes partly outside the image are
clipped to it; boxes of zero height or width (also after clipping or cropping) are dropped;
an inverted box (y2 < y1 or x2 < x1), a non-finite one or a class out of range is an error
naming the record. Boxes flagged by `ignore_key` (COCO `objects/is_crowd`, VOC
`objects/is_difficult`) are dropped from the ground truth. An image without objects is
valid (all background). A non-square image is resized to `image_size` squared (boxes
unchanged, as YOLO and SSD warp their inputs). Training applies scale jitter
(`scale_jitter`), a random shift (`data.aug.crop_padding`) and a horizontal flip
(`data.aug.flip`, `data.aug.vflip`) to image and boxes together on the host; a box that
leaves the image is dropped. The host batches uint8 images; the pixel-only augmentations
(colour jitter, blur, noise) and normalisation run on device (`device_preprocess`).

Ground truth is padded to `max_boxes`: `boxes` [M, 4] float32, `box_classes` [M] int32,
`box_valid` [M] float32 (1 real, 0 padding). A record with more objects than `max_boxes` is
an error naming it and the count, unless `too_many='drop'`, which keeps the `max_boxes`
largest and logs a warning naming the record and how many were dropped.

Evaluation. `detect` gives at most `max_detections` boxes per image after class-aware NMS;
`DetectionMetrics` turns them into VOC mAP@0.5 (all-point; `map50`, the best metric), VOC07
11-point AP, pycocotools' twelve COCO numbers (`coco_ap`, `coco_ap50`, ...), precision and
recall at `metric_score_threshold`, and per-class AP; evaluation also writes a per-class AP
table and PR curves (`DetectionMetrics.write_files`). COCO's area ranges (small < 32^2 px,
...) are in pixels of the network input.
"""

import abc
import dataclasses
import logging
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax.data import device_augment as DA
from cnnjax.data import geometry
from cnnjax.data import transforms as T
from cnnjax.data.features import Feature
from cnnjax.errors import ConfigError
from cnnjax.ops import nms as nms_ops
from cnnjax.tasks import plots
from cnnjax.tasks.base import Task
from cnnjax.tasks.classification import require_images

TOO_MANY = ("error", "drop")


@dataclasses.dataclass
class DetectionPredictions:
    """`predict`'s result per image: boxes [N, D, 4] float32 normalised (y1, x1, y2, x2),
    scores [N, D] float32, classes [N, D] int32, valid [N, D] bool (False on padding rows)."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    valid: np.ndarray


def read_path(record: dict, path: str):
    """record['a']['b'] for path 'a/b' (tfds' nested features), or None if absent."""
    value = record
    for part in path.split("/"):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def class_names(info, classes_key: str) -> list[str] | None:
    """The box classes' names: the dataset metadata's `class_names`, or the class feature's."""
    names = info.metadata.get("class_names")
    if names:
        return [str(n) for n in names]
    f = info.features.get(classes_key)
    return list(f.names) if f is not None and f.names else None


@dataclasses.dataclass(frozen=True)
class Detection(Task):
    """Shared data, evaluation and pictures of the detectors (see the module docstring)."""

    num_classes: int = 0  # 0 = the dataset's (metadata class_names or the class feature's)
    max_boxes: int = 16
    too_many: str = "error"  # a record with more objects than max_boxes: error | drop
    boxes_key: str = "boxes"
    classes_key: str = "box_classes"
    ignore_key: str = ""  # '' = none; else a bool per box (crowd / difficult): dropped
    scale_jitter: float = 0.0  # > 0: training images rescaled by a factor in [1-s, 1+s]
    score_threshold: float = 0.01  # detections below are dropped before NMS
    nms_iou: float = 0.5  # class-aware NMS threshold of the final detections
    max_detections: int = 100  # per image, after NMS
    metric_score_threshold: float = 0.5  # where precision50 / recall50 are measured

    METRICS: ClassVar[dict] = {
        "map50": "max", "map50_voc07": "max", "coco_ap": "max", "coco_ap50": "max",
        "coco_ap75": "max", "coco_aps": "max", "coco_apm": "max", "coco_apl": "max",
        "coco_ar1": "max", "coco_ar10": "max", "coco_ar100": "max", "coco_ars": "max",
        "coco_arm": "max", "coco_arl": "max", "precision50": "max", "recall50": "max",
    }  # fmt: skip
    best_metric: ClassVar[str] = "map50"
    Prediction: ClassVar[type] = DetectionPredictions

    def __post_init__(self):
        super().__post_init__()
        stored = class_names(self.info, self.classes_key)
        if self.num_classes <= 0 and not stored:
            raise ConfigError(
                f"dataset '{self.info.name}' does not say how many box classes it has; set "
                "task.kwargs.num_classes"
            )
        if self.num_classes > 0 and stored and self.num_classes != len(stored):
            raise ConfigError(
                f"task.kwargs.num_classes {self.num_classes} does not match dataset "
                f"'{self.info.name}', which has {len(stored)} box classes"
            )
        checks = [
            (isinstance(self.max_boxes, int) and self.max_boxes >= 1, "max_boxes", ">= 1"),
            (self.too_many in TOO_MANY, "too_many", f"one of {TOO_MANY}"),
            (0 <= self.scale_jitter < 1, "scale_jitter", "in [0, 1)"),
            (0 <= self.score_threshold < 1, "score_threshold", "in [0, 1)"),
            (0 < self.nms_iou <= 1, "nms_iou", "in (0, 1]"),
            (self.max_detections >= 1, "max_detections", ">= 1"),
            (0 <= self.metric_score_threshold < 1, "metric_score_threshold", "in [0, 1)"),
        ]
        for ok, key, expected in checks:
            if not ok:
                raise ConfigError(
                    f"task.kwargs.{key} must be {expected}, got {getattr(self, key)!r}"
                )

    @classmethod
    def check_info(cls, info) -> None:
        require_images(cls.name, info)

    @property
    def classes(self) -> int:
        return self.num_classes if self.num_classes > 0 else len(self.class_names)

    @property
    def class_names(self) -> list[str]:
        stored = class_names(self.info, self.classes_key)
        return stored or [str(i) for i in range(self.num_classes)]

    def summary(self) -> str:
        return f"{self.classes} classes, up to {self.max_boxes} boxes per image"

    def features(self) -> dict:
        s, c, m = self.image_size, self.info.image_shape[-1], self.max_boxes
        return {
            "image": Feature((s, s, c), "uint8", 0, 0, 256),
            "boxes": Feature((m, 4), "float32", 0.0, 0.0, 1.0),
            "box_classes": Feature((m,), "int32", 0, 0, self.classes),
            "box_valid": Feature((m,), "float32", 0.0, 0.0, 1.0),
        }

    # ---- data -------------------------------------------------------------------------
    def _objects(self, record: dict, index: int, training: bool) -> tuple:
        """-> (boxes [N, 4] float32 clipped to [0, 1], classes [N] int64) of a record."""
        boxes, classes = read_path(record, self.boxes_key), read_path(record, self.classes_key)
        if boxes is None or classes is None:
            if training:
                missing = self.boxes_key if boxes is None else self.classes_key
                raise ValueError(f"record {index}: no '{missing}' (the task's boxes / classes)")
            return np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)  # notebook input
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        classes = np.asarray(classes).reshape(-1).astype(np.int64)
        if len(boxes) != len(classes):
            raise ValueError(
                f"record {index}: {len(boxes)} boxes but {len(classes)} classes "
                f"('{self.boxes_key}', '{self.classes_key}')"
            )
        if not np.isfinite(boxes).all():
            bad_box = boxes[~np.isfinite(boxes).all(axis=1)][0]
            raise ValueError(f"record {index}: non-finite box {bad_box.tolist()}")
        inverted = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
        if inverted.any():
            raise ValueError(
                f"record {index}: inverted box {np.round(boxes[inverted][0], 6).tolist()} "
                "(expected "
                "y1 <= y2 and x1 <= x2, normalised (y1, x1, y2, x2))"
            )
        bad = (classes < 0) | (classes >= self.classes)
        if bad.any():
            raise ValueError(
                f"record {index}: box class {int(classes[bad][0])} outside [0, {self.classes})"
            )
        if self.ignore_key:
            flags = read_path(record, self.ignore_key)
            if flags is not None:
                keep = ~np.asarray(flags, bool).reshape(-1)
                boxes, classes = boxes[keep], classes[keep]
        return geometry.clip_boxes(boxes), classes

    def _pad(self, boxes: np.ndarray, classes: np.ndarray, index: int) -> tuple:
        n = len(boxes)
        if n > self.max_boxes:
            if self.too_many == "error":
                raise ValueError(
                    f"record {index}: {n} objects do not fit task.kwargs.max_boxes="
                    f"{self.max_boxes}; raise max_boxes or set task.kwargs.too_many='drop'"
                )
            keep = np.sort(np.argsort(-geometry.box_areas(boxes), kind="stable")[: self.max_boxes])
            logging.warning(
                "record %d: %d objects, max_boxes %d: dropped the %d smallest",
                index, n, self.max_boxes, n - self.max_boxes,
            )  # fmt: skip
            boxes, classes = boxes[keep], classes[keep]
        return geometry.pad_boxes(boxes, classes, self.max_boxes)

    def preprocess(self, record: dict, rng) -> dict:
        index = int(record["index"])
        T.check_image(record["image"], index, self.info.image_shape[-1])
        boxes, classes = self._objects(record, index, training=rng is not None)
        ex = {"image": record["image"], "boxes": boxes.astype(np.float32), "box_classes": classes}
        ex = geometry.drop_degenerate(ex)
        if rng is not None:
            ex = self._augment_geometry(ex, rng)
        ex = geometry.resize(ex, self.image_size, self.image_size)
        image = np.ascontiguousarray(ex["image"], np.uint8)
        extras = self.example_extras(T.to_float(image), ex)
        boxes, classes, valid = self._pad(ex["boxes"], ex["box_classes"], index)
        return {
            "image": image,
            "boxes": boxes,
            "box_classes": classes,
            "box_valid": valid,
            **extras,
        }

    def device_preprocess(self, batch: dict, rng) -> dict:
        """uint8 images (already moved with their boxes on the host) -> normalised float32;
        in training first colour jitter, blur and noise, which leave the boxes alone. The
        geometry stays on the host: random scale and crop drop boxes that leave the image,
        which changes how many an image has, and selective search (`example_extras`) needs
        the moved image."""
        norm = {"size": self.image_size, "mean": self.info.mean, "std": self.info.std}
        if rng is None:
            return {**batch, "image": DA.eval_batch(batch["image"], **norm)}
        pixels_only = dataclasses.replace(self.augment, crop_padding=0, flip=False, vflip=False)
        return {**batch, "image": DA.augment_batch(batch["image"], rng, pixels_only, **norm)}

    def example_extras(self, image: np.ndarray, example: dict) -> dict:
        """Per-example features a detector computes in the input pipeline from the moved
        and resized image (float [S, S, C] in [0, 1], before the device stage's colour work
        and normalisation) and its boxes (e.g.
        selective-search proposals); keys must be in `features()`. None by default."""
        return {}

    def _augment_geometry(self, ex: dict, rng) -> dict:
        if self.scale_jitter > 0:
            s = self.scale_jitter
            ex = geometry.random_scale(ex, 1 - s, 1 + s, rng)
        if self.augment.crop_padding > 0:
            ex = geometry.random_crop_with_padding(ex, self.augment.crop_padding, rng)
        if self.augment.flip or self.augment.vflip:
            ex = geometry.random_flip(
                ex, rng, horizontal=self.augment.flip, vertical=self.augment.vflip
            )
        return geometry.drop_degenerate(ex)

    # ---- model --------------------------------------------------------------------------
    def model_kwargs(self) -> dict:
        return {"num_classes": self.classes}

    @abc.abstractmethod
    def detect(self, apply_fn, variables, batch) -> dict:
        """Final detections of a batch (jittable): `boxes` [B, D, 4] normalised (y1, x1, y2,
        x2), `scores` [B, D], `classes` [B, D] int32, `valid` [B, D] bool, D =
        max_detections. Subclasses decode their model's outputs and `vmap` `select`."""

    def select(self, boxes, scores, class_ids=None) -> dict:
        """Score threshold + class-aware NMS + the top `max_detections`, for one image.

        boxes: [N, 4] (one box per candidate) or [N, K, 4] (class-specific boxes) float,
        normalised (y1, x1, y2, x2); scores: [N, K] per-class scores (every (candidate,
        class) pair is a detection candidate), or [N] with `class_ids` [N] int.
        Returns `detect`'s per-image dict (boxes clipped to [0, 1]).
        """
        if class_ids is None:
            n, k = scores.shape
            class_ids = jnp.broadcast_to(jnp.arange(k, dtype=jnp.int32), (n, k)).reshape(-1)
            boxes = boxes.reshape(-1, 4) if boxes.ndim == 3 else jnp.repeat(boxes, k, axis=0)
            scores = scores.reshape(-1)
        boxes = jnp.clip(boxes.astype(jnp.float32), 0.0, 1.0)
        scores = scores.astype(jnp.float32)
        top = min(scores.shape[0], max(4 * self.max_detections, 400))
        scores, order = jax.lax.top_k(scores, top)
        boxes, class_ids = boxes[order], class_ids[order].astype(jnp.int32)
        keep = scores > self.score_threshold
        kept, valid = nms_ops.batched_nms(
            boxes, scores, class_ids, self.nms_iou, self.max_detections, valid=keep
        )
        safe = jnp.maximum(kept, 0)
        return {
            "boxes": jnp.where(valid[:, None], boxes[safe], 0.0),
            "scores": jnp.where(valid, scores[safe], 0.0),
            "classes": jnp.where(valid, class_ids[safe], 0),
            "valid": valid,
        }

    # ---- evaluation ---------------------------------------------------------------------
    def eval_outputs(self, apply_fn, variables, batch) -> dict:
        det = self.detect(apply_fn, variables, batch)
        return {
            "det_boxes": det["boxes"],
            "det_scores": det["scores"],
            "det_classes": det["classes"],
            "det_valid": det["valid"],
            "gt_boxes": batch["boxes"],
            "gt_classes": batch["box_classes"],
            "gt_valid": batch["box_valid"],
            "mask": batch["mask"],
        }

    def metric(self):
        from cnnjax.metrics.detection import DetectionMetrics

        return DetectionMetrics(
            self.classes,
            (self.image_size, self.image_size),
            class_names=self.class_names,
            score_threshold=self.metric_score_threshold,
        )

    def predict(self, apply_fn, variables, batch) -> dict:
        return self.detect(apply_fn, variables, batch)

    def visualize(self, batch: dict, prediction: DetectionPredictions, min_score: float = 0.3):
        """One panel per example: the image, ground-truth boxes (dashed white, when the
        batch has them) and the predicted boxes scoring >= `min_score`, each labelled with
        its class and score."""
        from matplotlib.patches import Rectangle

        images = plots.denormalize(batch["image"], self.info.mean, self.info.std)
        n = len(images)
        cols = min(n, 4)
        rows = -(-n // cols)
        fig, axes = plots.figure(rows, cols, cell=2.2)
        colours = plots.palette(self.classes + 1)[1:]
        names = self.class_names
        s = self.image_size
        for ax in axes.flat[n:]:
            ax.set_axis_off()
        for i in range(n):
            ax = axes.flat[i]
            plots.show_image(ax, images[i])
            if "boxes" in batch and "box_valid" in batch:
                for b in batch["boxes"][i][batch["box_valid"][i] > 0] * s:
                    ax.add_patch(Rectangle((b[1] - 0.5, b[0] - 0.5), b[3] - b[1], b[2] - b[0],
                                           fill=False, ec="white", ls="--", lw=0.8))  # fmt: skip
            show = prediction.valid[i] & (prediction.scores[i] >= min_score)
            for b, c, p in zip(
                prediction.boxes[i][show] * s,
                prediction.classes[i][show],
                prediction.scores[i][show],
                strict=True,
            ):
                colour = colours[int(c) % len(colours)]
                ax.add_patch(Rectangle((b[1] - 0.5, b[0] - 0.5), b[3] - b[1], b[2] - b[0],
                                       fill=False, ec=colour, lw=1.2))  # fmt: skip
                ax.text(b[1] - 0.5, b[0] - 1.0, f"{names[int(c)]} {p:.2f}", color=colour,
                        fontsize=6, va="bottom")  # fmt: skip
        return fig
