"""SSD as a task: default boxes on the model's maps, the MultiBox loss with hard negative
mining (cnnjax/losses/ssd.py), and decoding into per-class softmax scores followed by
class-aware NMS. Data, metrics and pictures are `Detection`'s.

The default boxes are a constant of the model's map shapes (static under `jit`): the task
reads them off the model's 'map0', 'map1'... features and builds them with its own scales
and aspect ratios (`cnnjax.models.detection.ssd.default_boxes`); the same aspect ratios go
to the model (`model_kwargs`), so its heads predict as many boxes per cell.

Normalisation: the loss of a (micro-)batch is sum(loss_cls + box_weight * loss_box) over
its images divided by max(1, its matched default boxes), so a micro-batch without any
object (all backgrounds) is divided by 1; micro-batch accumulation sums the numerators and
these denominators, exactly.
"""

import dataclasses
import functools
from collections.abc import Sequence
from typing import ClassVar

import jax
import jax.numpy as jnp

from cnnjax.errors import ConfigError
from cnnjax.losses import ssd as ssd_loss
from cnnjax.models.detection.ssd import default_boxes
from cnnjax.tasks.base import Loss, apply_model
from cnnjax.tasks.detection import Detection


def _ratios_ok(aspect_ratios) -> bool:
    """One tuple of ratios > 0, or a tuple of such tuples (one per map)."""
    num = lambda a: isinstance(a, int | float) and a > 0
    rows = tuple(aspect_ratios) if isinstance(aspect_ratios, Sequence) else None
    if rows is None:
        return False
    return all(num(a) for a in rows) or all(
        isinstance(r, Sequence) and all(num(a) for a in r) for r in rows
    )


@dataclasses.dataclass(frozen=True)
class SSD(Detection):
    """SSD (Liu et al. 2016) on the maps of an `ssd` registry model."""

    s_min: float = 0.2  # scale of the finest map's default boxes (fraction of the image)
    s_max: float = 0.9  # scale of the coarsest map's
    aspect_ratios: tuple = (2.0, 3.0)  # each also inverted; or one tuple per map
    iou_threshold: float = 0.5  # a default box matches a ground truth box from this IoU
    neg_pos_ratio: float = 3.0  # hard negatives kept per positive
    min_negatives: int = 3  # hard negatives kept at least, also in an image without objects
    box_weight: float = 1.0  # the paper's alpha

    name: ClassVar[str] = "ssd"
    progress_keys: ClassVar[tuple] = ("loss", "loss_box", "loss_cls", "positives")

    def __post_init__(self):
        super().__post_init__()
        if _ratios_ok(self.aspect_ratios):  # lists from a config -> hashable tuples
            nested = not all(isinstance(a, int | float) for a in self.aspect_ratios)
            value = tuple(tuple(r) if nested else r for r in self.aspect_ratios)
            object.__setattr__(self, "aspect_ratios", value)
        checks = [
            (0 < self.s_min <= self.s_max, "s_min / s_max", "0 < s_min <= s_max"),
            (_ratios_ok(self.aspect_ratios), "aspect_ratios", "ratios > 0 (or one tuple per map)"),
            (0 < self.iou_threshold <= 1, "iou_threshold", "in (0, 1]"),
            (self.neg_pos_ratio >= 0, "neg_pos_ratio", ">= 0"),
            (isinstance(self.min_negatives, int) and self.min_negatives >= 0, "min_negatives",
             "an int >= 0"),
            (self.box_weight >= 0, "box_weight", ">= 0"),
        ]  # fmt: skip
        for ok, key, expected in checks:
            if not ok:
                value = (self.s_min, self.s_max) if "/" in key else getattr(self, key)
                raise ConfigError(f"task.kwargs.{key} must be {expected}, got {value!r}")

    def model_kwargs(self) -> dict:
        return {"num_classes": self.classes, "aspect_ratios": self.aspect_ratios}

    def _forward(self, apply_fn, variables, image, *, train: bool, rng=None):
        """-> (logits [B, A, K+1], deltas [B, A, 4], default boxes [A, 4], updates)."""
        (out, feats), updates = apply_model(apply_fn, variables, image, train=train, rng=rng)
        sizes = []
        while f"map{len(sizes)}" in feats:
            sizes.append(tuple(feats[f"map{len(sizes)}"].shape[1:3]))
        dboxes = default_boxes(sizes, self.s_min, self.s_max, self.aspect_ratios)
        logits, deltas = out["logits"], out["deltas"]
        want = (len(dboxes), self.classes + 1)
        if logits.shape[1:] != want or deltas.shape[1:] != (len(dboxes), 4):
            raise ConfigError(
                f"the model predicts logits {logits.shape[1:]} and deltas {deltas.shape[1:]} "
                f"per image; SSD with {self.classes} classes on maps {sizes} needs {want} and "
                f"({len(dboxes)}, 4) (is the model an `ssd` with the task's aspect_ratios?)"
            )
        return logits, deltas, jnp.asarray(dboxes), updates

    def loss(self, apply_fn, variables, batch, rng) -> Loss:
        logits, deltas, dboxes, updates = self._forward(
            apply_fn, variables, batch["image"], train=True, rng=rng
        )
        fn = functools.partial(
            ssd_loss.ssd_loss,
            iou_threshold=self.iou_threshold,
            neg_pos_ratio=self.neg_pos_ratio,
            min_negatives=self.min_negatives,
        )
        per = jax.vmap(fn, in_axes=(0, 0, None, 0, 0, 0))(
            logits, deltas, dboxes, batch["boxes"], batch["box_classes"], batch["box_valid"] > 0
        )
        m = batch["mask"].astype(jnp.float32)
        sums = {k: (v * m).sum() for k, v in per.items()}
        sums["loss_box"] = self.box_weight * sums["loss_box"]
        n_pos = jnp.maximum(sums["positives"], 1.0)
        images = m.sum()
        terms = {
            "loss_box": (sums["loss_box"], n_pos),
            "loss_cls": (sums["loss_cls"], n_pos),
            "positives": (sums["positives"], images),
            "negatives": (sums["negatives"], images),
        }
        return Loss(sums["loss_box"] + sums["loss_cls"], n_pos, terms, updates)

    def detect(self, apply_fn, variables, batch) -> dict:
        logits, deltas, dboxes, _ = self._forward(apply_fn, variables, batch["image"], train=False)

        def one(lg, dl):
            return self.select(*ssd_loss.decode(lg, dl, dboxes))

        return jax.vmap(one)(logits, deltas)
