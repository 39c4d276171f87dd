"""The two-stage detectors as options of one module: R-CNN (Girshick et al. 2014), SPPNet (He
et al. 2014), Fast R-CNN (Girshick 2015) and Faster R-CNN (Ren et al. 2015).

Two choices make the family:

- `proposals`: 'selective_search' (given with the images, computed in the input pipeline:
  cnnjax/data/proposals.py) or 'rpn' (a region proposal network on the shared map: 3x3 conv,
  then per anchor an objectness logit and (dy, dx, dh, dw) deltas; decoded, clipped, the
  top `rpn_pre_nms_top_k` by score kept, NMS at `rpn_nms_iou`, the top
  `rpn_post_nms_top_k` kept, all fixed shapes; (train, test) pairs as torchvision's
  2000 / 1000).
- `region_features`: 'warp' (R-CNN: every region is cut from the *image*, resized to
  `warp_size` squared and run through the backbone on its own; R-CNN's 16 px context
  padding is left out), 'spp' (SPPNet: a spatial pyramid of max pools of the shared map,
  `spp_levels`), 'roi_pool' (Fast R-CNN: one `pool_size` max pool level) or 'roi_align'
  (bilinear, Mask R-CNN / torchvision's Faster R-CNN).

The box head is torchvision's TwoMLPHead (two fully connected layers of `head_hidden`, ReLU)
and FastRCNNPredictor: K + 1 class logits (0 = background) and class-specific deltas [K, 4]
(weights (10, 10, 5, 5), decoded by the task). Every member, R-CNN included, trains this
softmax head end to end (R-CNN's per-class SVMs and separate regressor are not modelled).

Methods (the task calls them in training, `apply(..., method=...)`): `propose` (backbone +
RPN + proposals) and `classify` (region features + box head on given regions, so that the
task can sample them with the ground truth in between); `__call__` runs both for inference.
Boxes are pixels (y1, x1, y2, x2) of the input (cnnjax/ops/boxes.py).
"""

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnjax.errors import ConfigError
from cnnjax.models.detection.common import backbone_maps
from cnnjax.ops import boxes as box_ops
from cnnjax.ops import nms as nms_ops
from cnnjax.ops import roi as roi_ops

ModuleDef = Any
PROPOSALS = ("rpn", "selective_search")
REGION_FEATURES = ("warp", "spp", "roi_pool", "roi_align")


def generate_proposals(objectness, deltas, anchors, image_hw, *, pre_nms_top_k: int,
                       post_nms_top_k: int, nms_iou: float, min_size: float) -> tuple:  # fmt: skip
    """RPN outputs of one image -> proposals (torchvision's RegionProposalNetwork.filter_proposals).

    objectness: [A] logits; deltas: [A, 4]; anchors: [A, 4] pixels; image_hw: (H, W).
    Decodes (weights (1, 1, 1, 1)), clips to the image, keeps the top pre_nms_top_k by score,
    drops boxes with a side < min_size pixels, NMS at nms_iou, keeps post_nms_top_k.
    Returns (boxes [post, 4] pixels, scores [post] sigmoid, valid [post] bool; 0 on padding),
    without gradient (the approximate joint training treats proposals as constants).
    """
    objectness, deltas = jax.lax.stop_gradient((objectness, deltas))
    k = min(pre_nms_top_k, objectness.shape[0])
    logits, top = jax.lax.top_k(objectness.astype(jnp.float32), k)
    boxes = box_ops.decode(deltas[top].astype(jnp.float32), anchors[top])
    boxes = box_ops.clip_to_image(boxes, image_hw)
    big = jnp.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) >= min_size
    kept, valid = nms_ops.nms(boxes, logits, nms_iou, post_nms_top_k, valid=big)
    safe = jnp.maximum(kept, 0)
    scores = jnp.where(valid, jax.nn.sigmoid(logits[safe]), 0.0)
    return jnp.where(valid[:, None], boxes[safe], 0.0), scores, valid


class Body(nn.Module):
    """Registry backbone `backbone` read at `feature_stride`: [B, H, W, C] -> [B, H/s, W/s, C']."""

    num_classes: int
    backbone: str
    feature_stride: int
    conv: ModuleDef = nn.Conv
    norm: ModuleDef | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        (y,) = backbone_maps(self, x, train, (self.feature_stride,))
        return y


class RPNHead(nn.Module):
    """3x3 conv + ReLU, then 1x1 convs to A objectness logits and 4A deltas per cell:
    [B, h, w, C] -> (logits [B, h*w*A], deltas [B, h*w*A, 4]) in ops.boxes.anchors' order."""

    num_anchors: int
    conv: ModuleDef = nn.Conv
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        init = nn.initializers.normal(0.01)
        conv = functools.partial(self.conv, kernel_init=init, dtype=self.dtype)
        y = nn.relu(conv(x.shape[-1], (3, 3), padding=((1, 1), (1, 1)), name="conv")(x))
        logits = conv(self.num_anchors, (1, 1), name="objectness")(y)
        deltas = conv(4 * self.num_anchors, (1, 1), name="deltas")(y)
        b = x.shape[0]
        return (logits.reshape(b, -1).astype(jnp.float32),
                deltas.reshape(b, -1, 4).astype(jnp.float32))  # fmt: skip


class BoxHead(nn.Module):
    """TwoMLPHead + FastRCNNPredictor: [N, D] -> (logits [N, K + 1], deltas [N, K, 4])."""

    num_classes: int
    hidden: int = 1024
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        for i in (1, 2):
            x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, name=f"fc{i}")(x))
        k = self.num_classes
        logits = nn.Dense(k + 1, kernel_init=nn.initializers.normal(0.01), dtype=self.dtype,
                          name="cls_score")(x)  # fmt: skip
        deltas = nn.Dense(4 * k, kernel_init=nn.initializers.normal(0.001), dtype=self.dtype,
                          name="bbox_pred")(x)  # fmt: skip
        return logits.astype(jnp.float32), deltas.reshape(-1, k, 4).astype(jnp.float32)


class TwoStage(nn.Module):
    """R-CNN ... Faster R-CNN (see the module docstring): `body` (the registry backbone),
    `rpn` (when proposals='rpn'), `box_head`."""

    num_classes: int
    backbone: str = "resnet18"
    feature_stride: int = 16
    proposals: str = "rpn"
    region_features: str = "roi_align"
    anchor_scales: Sequence[float] = (32.0, 64.0, 128.0)
    anchor_ratios: Sequence[float] = (0.5, 1.0, 2.0)  # height / width
    rpn_pre_nms_top_k: Sequence[int] = (2000, 1000)  # (train, test)
    rpn_post_nms_top_k: Sequence[int] = (2000, 1000)
    rpn_nms_iou: float = 0.7
    rpn_min_size: float = 1e-3  # pixels
    pool_size: int = 7
    sampling_ratio: int = 2
    spp_levels: Sequence[int] = (1, 2, 4)
    warp_size: int = 32
    head_hidden: int = 1024
    conv: ModuleDef = nn.Conv
    norm: ModuleDef | None = nn.BatchNorm
    dtype: Any = jnp.float32

    def setup(self):
        if self.proposals not in PROPOSALS:
            raise ConfigError(f"two_stage proposals must be one of {PROPOSALS}, got "
                              f"{self.proposals!r}")  # fmt: skip
        if self.region_features not in REGION_FEATURES:
            raise ConfigError(f"two_stage region_features must be one of {REGION_FEATURES}, "
                              f"got {self.region_features!r}")  # fmt: skip
        self.body = Body(self.num_classes, self.backbone, self.feature_stride, self.conv,
                         self.norm, self.dtype)  # fmt: skip
        if self.proposals == "rpn":
            num = len(self.anchor_scales) * len(self.anchor_ratios)
            self.rpn = RPNHead(num, self.conv, self.dtype)
        self.box_head = BoxHead(self.num_classes, self.head_hidden, self.dtype)

    @property
    def shares_map(self) -> bool:
        """Whether the backbone runs on the whole image (RPN or pooled region features)."""
        return self.proposals == "rpn" or self.region_features != "warp"

    def anchors(self, feature_hw) -> jnp.ndarray:
        """Anchors [h*w*A, 4] pixels of a map of feature_hw at feature_stride."""
        return box_ops.anchors(feature_hw, self.feature_stride, self.anchor_scales,
                               self.anchor_ratios)  # fmt: skip

    def propose(self, images, train: bool = False) -> dict:
        """images [B, H, W, C] -> {'feature': [B, h, w, C'] (absent for selective search +
        warp)} and, with the RPN, 'objectness' [B, A], 'rpn_deltas' [B, A, 4], 'anchors'
        [A, 4], 'proposals' [B, P, 4] pixels, 'proposal_scores' [B, P], 'proposal_valid'
        [B, P] bool (P = rpn_post_nms_top_k of train / test)."""
        if not self.shares_map:
            return {}
        feature = self.body(images, train)
        out = {"feature": feature}
        if self.proposals != "rpn":
            return out
        objectness, deltas = self.rpn(feature)
        anchors = self.anchors(feature.shape[1:3])
        i = 0 if train else 1
        fn = functools.partial(
            generate_proposals, anchors=anchors, image_hw=images.shape[1:3],
            pre_nms_top_k=self.rpn_pre_nms_top_k[i], post_nms_top_k=self.rpn_post_nms_top_k[i],
            nms_iou=self.rpn_nms_iou, min_size=self.rpn_min_size,
        )  # fmt: skip
        boxes, scores, valid = jax.vmap(fn)(objectness, deltas)
        return {**out, "objectness": objectness, "rpn_deltas": deltas, "anchors": anchors,
                "proposals": boxes, "proposal_scores": scores, "proposal_valid": valid}  # fmt: skip

    def region_vectors(self, images, feature, rois, train: bool = False):
        """One feature vector per region: rois [B, R, 4] pixels -> [B, R, D]."""
        b, r = rois.shape[:2]
        scale = 1.0 / self.feature_stride
        if self.region_features == "warp":
            crop = functools.partial(roi_ops.roi_align, output_size=self.warp_size,
                                     sampling_ratio=self.sampling_ratio)  # fmt: skip
            crops = jax.vmap(crop)(images, rois)  # [B, R, s, s, C]
            y = self.body(crops.reshape(b * r, *crops.shape[2:]), train)
        elif self.region_features == "spp":
            pool = functools.partial(roi_ops.spatial_pyramid_pool, levels=self.spp_levels,
                                     spatial_scale=scale)  # fmt: skip
            y = jax.vmap(pool)(feature, rois)
        elif self.region_features == "roi_pool":
            y = jax.vmap(functools.partial(roi_ops.roi_pool, output_size=self.pool_size,
                                           spatial_scale=scale))(feature, rois)  # fmt: skip
        else:
            align = functools.partial(
                roi_ops.roi_align,
                output_size=self.pool_size,
                spatial_scale=scale,
                sampling_ratio=self.sampling_ratio,
            )
            y = jax.vmap(align)(feature, rois)
        return y.reshape(b, r, -1)

    def classify(self, images, feature, rois, train: bool = False) -> tuple:
        """Box head on regions rois [B, R, 4] pixels (feature from `propose`, None for
        selective search + warp) -> (class_logits [B, R, K + 1], box_deltas [B, R, K, 4])."""
        b, r = rois.shape[:2]
        x = self.region_vectors(images, feature, rois, train)
        logits, deltas = self.box_head(x.reshape(b * r, -1))
        return logits.reshape(b, r, -1), deltas.reshape(b, r, self.num_classes, 4)

    def __call__(self, images, proposals=None, proposal_valid=None, train: bool = False):
        """Inference. images [B, H, W, C]; proposals [B, P, 4] pixels and proposal_valid
        [B, P] (selective search only) -> (outputs, features): outputs 'rois' [B, R, 4]
        pixels, 'roi_valid' [B, R] bool, 'class_logits' [B, R, K + 1], 'box_deltas'
        [B, R, K, 4] (and the RPN's outputs); features {'stride<s>': the shared map}."""
        out = self.propose(images, train)
        if self.proposals == "rpn":
            rois, valid = out["proposals"], out["proposal_valid"]
        elif proposals is None or proposal_valid is None:
            raise ConfigError("two_stage with selective_search proposals needs `proposals` "
                              "and `proposal_valid` inputs")  # fmt: skip
        else:
            rois, valid = proposals.astype(jnp.float32), jnp.asarray(proposal_valid) > 0
        logits, deltas = self.classify(images, out.get("feature"), rois, train)
        feats = {f"stride{self.feature_stride}": out["feature"]} if "feature" in out else {}
        outputs = {k: v for k, v in out.items() if k != "feature"}
        outputs.update(rois=rois, roi_valid=valid, class_logits=logits, box_deltas=deltas)
        return outputs, feats


MODELS = {"two_stage": TwoStage}
