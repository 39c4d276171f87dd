"""Greedy non-maximum suppression with static shapes: a fixed-size padded output and a validity
mask, so it runs under `jit` and `vmap` (one image per call).

Boxes are `[N, 4]` (y1, x1, y2, x2) in any one unit (see cnnjax/ops/boxes.py). The greedy rule
is torchvision's: visit boxes by descending score (equal scores in index order), keep a box
unless an already kept one has IoU strictly greater than the threshold with it. So threshold 1
suppresses nothing, threshold 0 suppresses every overlapping box, and zero-area boxes (IoU 0
with everything) are never suppressed.
"""

import jax
import jax.numpy as jnp

from cnnjax.ops.boxes import _check_boxes, _fraction, area


def _iou_row(box, boxes, box_area, areas):
    """IoU of one box [4] with boxes [N, 4] -> [N], 0 where the union is empty."""
    lo = jnp.maximum(box[:2], boxes[:, :2])
    hi = jnp.minimum(box[2:], boxes[:, 2:])
    inter = jnp.maximum(hi[:, 0] - lo[:, 0], 0) * jnp.maximum(hi[:, 1] - lo[:, 1], 0)
    union = box_area + areas - inter
    return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1), 0)


def _greedy(boxes, scores, classes, valid, iou_threshold, max_output: int, fn: str):
    _check_boxes(boxes, f"{fn}: boxes")
    if boxes.ndim != 2 or scores.shape != boxes.shape[:1]:
        raise ValueError(
            f"{fn} needs boxes [N, 4] and scores [N], got {boxes.shape}, {scores.shape}"
        )
    if not isinstance(max_output, int) or max_output < 1:
        raise ValueError(f"{fn} max_output must be an int >= 1, got {max_output!r}")
    _fraction(iou_threshold, f"{fn} iou_threshold")
    boxes, scores, n = jnp.asarray(boxes), jnp.asarray(scores), boxes.shape[0]
    valid = jnp.ones(n, bool) if valid is None else jnp.asarray(valid, bool)
    order = jnp.argsort(scores, descending=True, stable=True)
    boxes, valid = boxes[order], valid[order]
    classes = None if classes is None else jnp.asarray(classes)[order]
    areas = area(boxes)

    def cond(state):
        alive, _, count = state
        return (count < max_output) & jnp.any(alive)

    def body(state):
        alive, kept, count = state
        j = jnp.argmax(alive)  # the best-scoring box still alive
        hit = _iou_row(boxes[j], boxes, areas[j], areas) > iou_threshold
        if classes is not None:
            hit &= classes == classes[j]
        alive = (alive & ~hit).at[j].set(False)
        return alive, kept.at[count].set(order[j]), count + 1

    kept = jnp.full(max_output, -1, jnp.int32)
    _, kept, count = jax.lax.while_loop(cond, body, (valid, kept, jnp.int32(0)))
    return kept, jnp.arange(max_output) < count


def nms(boxes, scores, iou_threshold: float, max_output: int, valid=None):
    """Greedy NMS (torchvision.ops.nms), at most `max_output` boxes kept.

    boxes: [N, 4] float (y1, x1, y2, x2); scores: [N] float; iou_threshold: in [0, 1] (checked
    when concrete; it may be traced); max_output: static int >= 1; valid: optional [N] bool,
    False for boxes that must never be kept (padding, below a score threshold).
    Returns (indices [max_output] int32 into boxes, by descending score, padded with -1;
    valid [max_output] bool, True on a prefix: the kept boxes).
    Cost: one [N] IoU row per kept box, O(N log N + max_output * N), no [N, N] matrix.
    """
    return _greedy(boxes, scores, None, valid, iou_threshold, max_output, "nms")


def batched_nms(boxes, scores, classes, iou_threshold: float, max_output: int, valid=None):
    """Class-aware greedy NMS (torchvision.ops.batched_nms): a box is suppressed only by kept
    boxes of its own class; the classes share the `max_output` slots by descending score.

    boxes: [N, 4] float (y1, x1, y2, x2); scores: [N] float; classes: [N] int; iou_threshold,
    max_output, valid and the returned (indices [max_output] int32, valid [max_output] bool)
    as in `nms`. The class test is exact (no coordinate-offset trick).
    """
    if classes.shape != scores.shape:
        raise ValueError(f"batched_nms needs classes [N] like scores, got {classes.shape}")
    return _greedy(boxes, scores, classes, valid, iou_threshold, max_output, "batched_nms")
