"""The two-stage detectors' losses (Faster R-CNN, Ren et al. 2015; torchvision's `rpn` and
`roi_heads.fastrcnn_loss`) as pure functions of one image: target assignment (IoU matching
and balanced sampling) and the four named terms.

Boxes are pixels (y1, x1, y2, x2) of the network input (cnnjax/ops/boxes.py); ground truth is
padded to [G, 4] with `valid` [G] bool. Classes: the RoI head's logits are [R, K + 1] with
0 = background and object class c at c + 1; its box deltas are class-specific [R, K, 4].

  loss_rpn_obj  BCE of the objectness of the sampled anchors (256, half positive at most:
                IoU >= 0.7 or an object's best anchor; negatives IoU < 0.3), their mean
  loss_rpn_box  smooth L1 (beta 1/9) of the positive anchors' deltas, summed, divided by
                the number of sampled anchors (weights (1, 1, 1, 1))
  loss_cls      softmax cross-entropy of the sampled RoIs (proposals plus the ground truth,
                positives IoU >= 0.5, at most 25%), their mean
  loss_box      smooth L1 (beta 1/9) of the positive RoIs' deltas for their true class,
                summed, divided by the number of sampled RoIs (weights (10, 10, 5, 5))

Each term is normalised by the image's own sample count (torchvision divides by the batch's,
the same whenever every image fills its sample). An image without objects has no positives:
its box terms are 0 and its samples all background, never NaN.
"""

from typing import NamedTuple

import jax.numpy as jnp
import optax

from cnnjax.ops import boxes as box_ops

RPN_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
ROI_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
TERMS = ("loss_rpn_obj", "loss_rpn_box", "loss_cls", "loss_box")


class Targets(NamedTuple):
    """Sampled training targets of one image (S = samples per image).

    index: [S] int32 into the candidates (anchors, or proposals then ground truth), -1 on
    padding; label: [S] int32 (RPN: 1 object / 0 background; RoI head: 0 background, c + 1);
    boxes: [S, 4] the sampled candidates (pixels); deltas: [S, 4] encoded regression targets
    (0 off positives); positive, valid: [S] bool.
    """

    index: jnp.ndarray
    label: jnp.ndarray
    boxes: jnp.ndarray
    deltas: jnp.ndarray
    positive: jnp.ndarray
    valid: jnp.ndarray


def smooth_l1(x, beta: float):
    """Element-wise smooth L1 (Huber / beta, torch's F.smooth_l1_loss): 0.5 x^2 / beta for
    |x| < beta, |x| - 0.5 beta above; [...] -> [...]."""
    ax = jnp.abs(x)
    return jnp.where(ax < beta, 0.5 * x * x / beta, ax - 0.5 * beta)


def _assign(candidates, candidate_valid, gt_boxes, gt_valid, key, *, batch_size: int,
            positive_fraction: float, fg_iou: float, bg_iou: float, low_quality: bool,
            weights) -> tuple:  # fmt: skip
    """Match candidates [N, 4] to the ground truth, sample, encode -> (Targets without
    labels, matched ground-truth row [S] int32)."""
    iou = box_ops.iou_matrix(gt_boxes, candidates)  # [G, N]
    matches = box_ops.match(iou, gt_valid, fg_iou, bg_iou, allow_low_quality=low_quality)
    matches = jnp.where(candidate_valid, matches, box_ops.IGNORE)
    index, positive, valid = box_ops.sample(matches, key, batch_size, positive_fraction)
    safe = jnp.maximum(index, 0)
    row = jnp.maximum(matches[safe], 0)
    boxes = jnp.where(valid[:, None], candidates[safe], 0.0)
    # Padding slots have zero-size boxes: select (never multiply) so no inf / NaN survives.
    ok = positive[:, None]
    unit = jnp.array([0.0, 0.0, 1.0, 1.0], boxes.dtype)
    deltas = box_ops.encode(gt_boxes[row], jnp.where(ok, boxes, unit), weights)
    deltas = jnp.where(ok, deltas, 0.0)
    return Targets(index, jnp.zeros_like(index), boxes, deltas, positive, valid), row


def rpn_targets(anchors, gt_boxes, gt_valid, key, *, batch_size: int = 256,
                positive_fraction: float = 0.5, fg_iou: float = 0.7,
                bg_iou: float = 0.3) -> Targets:  # fmt: skip
    """The RPN's sampled anchors of one image (torchvision's RegionProposalNetwork).

    anchors: [A, 4] pixels; gt_boxes: [G, 4] pixels; gt_valid: [G] bool; key: a PRNG key.
    Anchors match at IoU >= fg_iou (plus each object's best anchors), are background below
    bg_iou and ignored between. Returns `Targets` with S = batch_size, label 1 / 0.
    """
    gt_valid = jnp.asarray(gt_valid, bool)
    t, _ = _assign(anchors, jnp.ones(anchors.shape[0], bool), gt_boxes, gt_valid, key,
                   batch_size=batch_size, positive_fraction=positive_fraction, fg_iou=fg_iou,
                   bg_iou=bg_iou, low_quality=True, weights=RPN_WEIGHTS)  # fmt: skip
    return t._replace(label=t.positive.astype(jnp.int32))


def roi_targets(proposals, proposal_valid, gt_boxes, gt_classes, gt_valid, key, *,
                batch_size: int = 512, positive_fraction: float = 0.25, fg_iou: float = 0.5,
                bg_iou: float = 0.5, weights=ROI_WEIGHTS) -> Targets:  # fmt: skip
    """The RoI head's sampled regions of one image (torchvision's
    RoIHeads.select_training_samples): the ground truth is appended to the proposals.

    proposals: [P, 4] pixels; proposal_valid: [P] bool; gt_boxes: [G, 4] pixels; gt_classes:
    [G] int in [0, K); gt_valid: [G] bool; key: a PRNG key. Regions match at IoU >= fg_iou,
    are background below bg_iou (torchvision: 0.5 and 0.5). Returns `Targets` with
    S = batch_size over the P + G candidates, label = class + 1 on positives, else 0.
    """
    gt_valid = jnp.asarray(gt_valid, bool)
    candidates = jnp.concatenate([proposals, gt_boxes.astype(proposals.dtype)], axis=0)
    valid = jnp.concatenate([jnp.asarray(proposal_valid, bool), gt_valid])
    t, row = _assign(candidates, valid, gt_boxes, gt_valid, key, batch_size=batch_size,
                     positive_fraction=positive_fraction, fg_iou=fg_iou, bg_iou=bg_iou,
                     low_quality=False, weights=weights)  # fmt: skip
    label = jnp.where(t.positive, gt_classes[row].astype(jnp.int32) + 1, 0)
    return t._replace(label=label)


def _mean_over(valid, values):
    n = jnp.sum(valid.astype(jnp.float32))
    return jnp.sum(jnp.where(valid, values, 0.0)) / jnp.maximum(n, 1.0)


def rpn_loss(objectness, deltas, targets: Targets, beta: float = 1.0 / 9) -> dict:
    """RPN terms of one image: objectness [A] logits, deltas [A, 4] (all anchors),
    `rpn_targets`' Targets -> {'loss_rpn_obj', 'loss_rpn_box'}: [] float32 each."""
    safe = jnp.maximum(targets.index, 0)
    logits = objectness.astype(jnp.float32)[safe]
    bce = optax.sigmoid_binary_cross_entropy(logits, targets.label.astype(jnp.float32))
    box = jnp.sum(smooth_l1(deltas.astype(jnp.float32)[safe] - targets.deltas, beta), -1)
    return {
        "loss_rpn_obj": _mean_over(targets.valid, bce),
        "loss_rpn_box": _mean_over(targets.valid, jnp.where(targets.positive, box, 0.0)),
    }


def roi_loss(class_logits, box_deltas, targets: Targets, beta: float = 1.0 / 9) -> dict:
    """RoI head terms of one image (torchvision's fastrcnn_loss): class_logits [S, K + 1]
    and class-specific box_deltas [S, K, 4] of the sampled regions, `roi_targets`' Targets
    -> {'loss_cls', 'loss_box'}: [] float32 each."""
    logits = class_logits.astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets.label)
    cls = jnp.maximum(targets.label - 1, 0)
    pred = jnp.take_along_axis(box_deltas.astype(jnp.float32), cls[:, None, None], axis=1)[:, 0]
    box = jnp.sum(smooth_l1(pred - targets.deltas, beta), -1)
    return {
        "loss_cls": _mean_over(targets.valid, ce),
        "loss_box": _mean_over(targets.valid, jnp.where(targets.positive, box, 0.0)),
    }
