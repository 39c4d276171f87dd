"""The two-stage detectors (R-CNN, SPPNet, Fast R-CNN, Faster R-CNN) as one task: the model's
`proposals` and `region_features` are task options (forwarded to model `two_stage`), so a
config names a family member by two words and the task knows what the batch must carry.

Selective search proposals are computed in the input pipeline (`example_extras`: features
`proposals` [P, 4] normalised and `proposal_valid` [P]); RPN proposals come from the model.
Training is one step in both cases: the task runs the model's `propose` (backbone, RPN),
samples the RPN's anchors and the RoI head's regions against the ground truth
(cnnjax/losses/two_stage.py) and runs `classify` on the sampled regions; Faster R-CNN's
approximate joint training (the RPN and the head trained together, no gradient through the
proposal coordinates). Detection decodes each final region's class-specific boxes, scores
them by softmax and hands [R, K, 4] boxes to `Detection.select`.
"""

import dataclasses
import functools
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax.data.features import Feature
from cnnjax.data.proposals import MODES, selective_search
from cnnjax.errors import ConfigError
from cnnjax.losses import two_stage as losses
from cnnjax.models.detection.two_stage import PROPOSALS, REGION_FEATURES
from cnnjax.ops import boxes as box_ops
from cnnjax.tasks.base import Loss, apply_model
from cnnjax.tasks.detection import Detection


@dataclasses.dataclass(frozen=True)
class TwoStage(Detection):
    """A two-stage detector; `proposals` x `region_features` picks the family member."""

    proposals: str = "rpn"  # rpn | selective_search
    region_features: str = "roi_align"  # warp | spp | roi_pool | roi_align
    num_proposals: int = 64  # selective search: proposals kept per image
    search_mode: str = "fast"  # selective search strategy: fast | quality | single
    search_min_side: int = 128  # selective search upsamples smaller images to this
    rpn_batch_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    rpn_fg_iou: float = 0.7
    rpn_bg_iou: float = 0.3
    roi_batch_per_image: int = 512
    roi_positive_fraction: float = 0.25
    roi_fg_iou: float = 0.5
    roi_bg_iou: float = 0.5

    name: ClassVar[str] = "two_stage"
    progress_keys: ClassVar[tuple] = ("loss", *losses.TERMS)

    def __post_init__(self):
        super().__post_init__()
        choices = [("proposals", PROPOSALS), ("region_features", REGION_FEATURES),
                   ("search_mode", MODES)]  # fmt: skip
        for key, valid in choices:
            if getattr(self, key) not in valid:
                raise ConfigError(
                    f"task.kwargs.{key} must be one of {valid}, got {getattr(self, key)!r}"
                )
        for key in ("num_proposals", "rpn_batch_per_image", "roi_batch_per_image"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise ConfigError(
                    f"task.kwargs.{key} must be an int >= 1, got {getattr(self, key)!r}"
                )
        for stage in ("rpn", "roi"):
            fg, bg, frac = (getattr(self, f"{stage}_{k}")
                            for k in ("fg_iou", "bg_iou", "positive_fraction"))  # fmt: skip
            if not (0 <= bg <= fg <= 1 and 0 <= frac <= 1):
                raise ConfigError(
                    f"task.kwargs.{stage}_bg_iou <= {stage}_fg_iou must lie in [0, 1] and "
                    f"{stage}_positive_fraction too, got {bg}, {fg}, {frac}"
                )

    @property
    def searches(self) -> bool:
        return self.proposals == "selective_search"

    @property
    def input_keys(self) -> tuple[str, ...]:
        """What `predict` reads of a batch: the image, and the selective-search proposals
        the input pipeline computed when the detector does not propose its own."""
        return ("image", "proposals", "proposal_valid") if self.searches else ("image",)

    def summary(self) -> str:
        return f"{super().summary()}; {self.proposals} proposals, {self.region_features}"

    # ---- data ---------------------------------------------------------------------------
    def features(self) -> dict:
        spec = super().features()
        if self.searches:
            p = self.num_proposals
            spec["proposals"] = Feature((p, 4), "float32", 0.0, 0.0, 1.0)
            spec["proposal_valid"] = Feature((p,), "float32", 0.0, 0.0, 1.0)
        return spec

    def example_extras(self, image: np.ndarray, example: dict) -> dict:
        if not self.searches:
            return {}
        boxes, valid = selective_search(image, self.num_proposals, mode=self.search_mode,
                                        min_side=self.search_min_side)  # fmt: skip
        return {"proposals": boxes, "proposal_valid": valid}

    # ---- model --------------------------------------------------------------------------
    def model_kwargs(self) -> dict:
        return {"num_classes": self.classes, "proposals": self.proposals,
                "region_features": self.region_features}  # fmt: skip

    def init_inputs(self) -> tuple:
        images = super().init_inputs()
        if not self.searches:
            return images
        p = self.num_proposals
        return (*images, np.zeros((1, p, 4), np.float32), np.zeros((1, p), np.float32))

    def _given_proposals(self, batch) -> tuple:
        """Selective search proposals of a batch -> (pixels [B, P, 4], valid [B, P] bool)."""
        s = self.image_size
        return box_ops.to_pixels(batch["proposals"], (s, s)), batch["proposal_valid"] > 0

    def _rpn_terms(self, stage1: dict, gt, gt_valid, key) -> dict:
        """The RPN's loss terms per image [B] from `propose`'s training outputs."""
        assign = functools.partial(
            losses.rpn_targets, batch_size=self.rpn_batch_per_image,
            positive_fraction=self.rpn_positive_fraction, fg_iou=self.rpn_fg_iou,
            bg_iou=self.rpn_bg_iou,
        )  # fmt: skip
        keys = jax.random.split(key, gt.shape[0])
        t = jax.vmap(assign, in_axes=(None, 0, 0, 0))(stage1["anchors"], gt, gt_valid, keys)
        return jax.vmap(losses.rpn_loss)(stage1["objectness"], stage1["rpn_deltas"], t)

    def _roi_targets(self, proposals, valid, gt, classes, gt_valid, key) -> losses.Targets:
        assign = functools.partial(
            losses.roi_targets, batch_size=self.roi_batch_per_image,
            positive_fraction=self.roi_positive_fraction, fg_iou=self.roi_fg_iou,
            bg_iou=self.roi_bg_iou,
        )  # fmt: skip
        keys = jax.random.split(key, gt.shape[0])
        return jax.vmap(assign)(proposals, valid, gt, classes, gt_valid, keys)

    def loss(self, apply_fn, variables, batch, rng) -> Loss:
        k_model, k_rpn, k_roi = jax.random.split(rng, 3)
        images, s = batch["image"], self.image_size
        gt, gt_valid = box_ops.to_pixels(batch["boxes"], (s, s)), batch["box_valid"] > 0
        run = functools.partial(apply_model, apply_fn, train=True, rng=k_model)
        stage1, updates = run(variables, images, method="propose")
        variables = {**variables, **updates}  # BN statistics thread into the second call
        if self.searches:
            terms = {}
            proposals, valid = self._given_proposals(batch)
        else:
            terms = self._rpn_terms(stage1, gt, gt_valid, k_rpn)
            proposals, valid = stage1["proposals"], stage1["proposal_valid"]
        t = self._roi_targets(proposals, valid, gt, batch["box_classes"], gt_valid, k_roi)
        (logits, deltas), updates = run(variables, images, stage1.get("feature"), t.boxes,
                                        method="classify")  # fmt: skip
        terms.update(jax.vmap(losses.roi_loss)(logits, deltas, t))
        m = batch["mask"]
        n = m.sum()
        sums = {k: (v * m).sum() for k, v in terms.items()}
        return Loss(sum(sums.values()), n, {k: (v, n) for k, v in sums.items()}, updates)

    # ---- evaluation ---------------------------------------------------------------------
    def detect(self, apply_fn, variables, batch) -> dict:
        s = self.image_size
        inputs = (batch["image"], *self._given_proposals(batch)) if self.searches else (
            batch["image"],)  # fmt: skip
        (out, _), _ = apply_model(apply_fn, variables, *inputs, train=False)

        def one(rois, valid, logits, deltas):
            boxes = box_ops.decode(deltas, rois[:, None, :], losses.ROI_WEIGHTS)  # [R, K, 4]
            boxes = box_ops.to_normalized(box_ops.clip_to_image(boxes, (s, s)), (s, s))
            scores = jax.nn.softmax(logits, axis=-1)[:, 1:]
            return self.select(boxes, jnp.where(valid[:, None], scores, 0.0))

        return jax.vmap(one)(out["rois"], out["roi_valid"], out["class_logits"],
                             out["box_deltas"])  # fmt: skip
