"""SSD's MultiBox loss (Liu et al. 2016, eq. 1-3) as pure functions of one image's outputs,
its default boxes and its padded ground truth.

Boxes are normalised (y1, x1, y2, x2) in [0, 1] (the task's ground truth; the images are
square, so IoU there is IoU in pixels). Per image, with A default boxes and G padded
ground-truth rows:

- matching (`match_default_boxes`): every default box whose best IoU with a valid ground
  truth box is >= `iou_threshold` (0.5) is matched to that box; then each valid ground truth
  box takes its own best default box (the paper's "best jaccard overlap" step, torchvision's
  `SSDMatcher`), even below the threshold, unless it overlaps no default box at all (a
  zero-size box). When two ground truth boxes share a best default box the later row wins.
- box targets: `cnnjax.ops.boxes.encode` against the default box with weights (10, 10, 5, 5),
  i.e. SSD's variances (0.1, 0.1, 0.2, 0.2).
- hard negative mining (`mine_negatives`): the unmatched default boxes ranked by their
  background cross-entropy (no gradient through the ranking; ties by index), of which the
  top k = min(#negatives, max(neg_pos_ratio * #positives, min_negatives)) are kept. The
  floor `min_negatives` (default 3, one positive's worth) makes an image without objects
  still teach the background; the paper and torchvision keep none there.
- loss_box = sum over positives of smooth L1 (beta 1) over the 4 offsets;
  loss_cls = sum over positives and mined negatives of the softmax cross-entropy (class 0 is
  background, object class c is c + 1). The task divides their sum by the number of
  positives (the paper's N).
"""

import jax
import jax.numpy as jnp

from cnnjax.ops import boxes as box_ops

VARIANCE_WEIGHTS = (10.0, 10.0, 5.0, 5.0)  # 1 / (0.1, 0.1, 0.2, 0.2)


def match_default_boxes(gt_boxes, valid, dboxes, iou_threshold: float = 0.5):
    """Ground truth row of each default box (see the module docstring).

    gt_boxes: [G, 4] float; valid: [G] bool; dboxes: [A, 4] float, normalised yxyx.
    Returns [A] int32: the matched row in [0, G), or -1 (background).
    """
    iou = box_ops.iou_matrix(jnp.asarray(gt_boxes, jnp.float32), dboxes)  # [G, A]
    matched = box_ops.match(iou, valid, iou_threshold, iou_threshold)
    q = jnp.where(valid[:, None], iou, -1.0)
    best_anchor = jnp.argmax(q, axis=1)  # [G]
    forced = valid & (jnp.max(q, axis=1) > 0)
    rows = jnp.arange(q.shape[0])
    hit = (best_anchor[:, None] == jnp.arange(q.shape[1])[None, :]) & forced[:, None]  # [G, A]
    last = jnp.max(jnp.where(hit, rows[:, None], -1), axis=0)  # the last row claiming it
    return jnp.where(last >= 0, last, matched).astype(jnp.int32)


def smooth_l1(x, beta: float = 1.0):
    """Element-wise smooth L1 (Huber / beta): 0.5 x^2 / beta for |x| < beta, else |x| - beta/2."""
    ax = jnp.abs(x)
    return jnp.where(ax < beta, 0.5 * jnp.square(x) / beta, ax - 0.5 * beta)


def mine_negatives(bg_loss, positive, neg_pos_ratio: float = 3.0, min_negatives: int = 3):
    """Hard negatives of one image.

    bg_loss: [A] float, each default box's cross-entropy against the background; positive:
    [A] bool. Returns [A] bool: the k highest-loss non-positive boxes, k =
    min(#negatives, max(floor(neg_pos_ratio * #positives), min_negatives)); equal losses are
    taken in index order.
    """
    n_pos = jnp.sum(positive)
    k = jnp.maximum(jnp.floor(neg_pos_ratio * n_pos).astype(jnp.int32), min_negatives)
    ranked = jnp.where(positive, -jnp.inf, jax.lax.stop_gradient(bg_loss))
    order = jnp.argsort(-ranked, stable=True)
    rank = jnp.zeros_like(order).at[order].set(jnp.arange(order.shape[0]))
    return (rank < k) & ~positive


def ssd_loss(
    logits,
    deltas,
    dboxes,
    gt_boxes,
    gt_classes,
    valid,
    *,
    iou_threshold: float = 0.5,
    neg_pos_ratio: float = 3.0,
    min_negatives: int = 3,
) -> dict:
    """SSD's loss terms of one image (unnormalised sums; see the module docstring).

    logits: [A, K + 1] float (class 0 background); deltas: [A, 4] float (dy, dx, dh, dw);
    dboxes: [A, 4] normalised yxyx default boxes; gt_boxes: [G, 4] normalised yxyx;
    gt_classes: [G] int in [0, K); valid: [G] bool (False on padding rows).
    Returns {'loss_box', 'loss_cls', 'positives', 'negatives'}: [] float32 each (the counts
    of matched and mined default boxes). Finite for images without objects, zero-size boxes
    and any finite outputs.
    """
    logits, deltas = jnp.asarray(logits, jnp.float32), jnp.asarray(deltas, jnp.float32)
    gt_boxes, gt_classes = jnp.asarray(gt_boxes, jnp.float32), jnp.asarray(gt_classes)
    row = match_default_boxes(gt_boxes, valid, dboxes, iou_threshold)
    pos = row >= 0
    safe = jnp.maximum(row, 0)
    target_cls = jnp.where(pos, gt_classes[safe].astype(jnp.int32) + 1, 0)
    log_p = jax.nn.log_softmax(logits)
    ce = -jnp.take_along_axis(log_p, target_cls[:, None], axis=1)[:, 0]  # [A]
    neg = mine_negatives(-log_p[:, 0], pos, neg_pos_ratio, min_negatives)
    target = box_ops.encode(gt_boxes[safe], dboxes, VARIANCE_WEIGHTS)
    target = jnp.where(pos[:, None], target, 0.0)  # unmatched rows: no far-off log target
    box = jnp.sum(smooth_l1(deltas - target), axis=-1)
    return {
        "loss_box": jnp.sum(jnp.where(pos, box, 0.0)),
        "loss_cls": jnp.sum(jnp.where(pos | neg, ce, 0.0)),
        "positives": jnp.sum(pos).astype(jnp.float32),
        "negatives": jnp.sum(neg).astype(jnp.float32),
    }


def decode(logits, deltas, dboxes):
    """One image's outputs -> (boxes [A, 4] normalised yxyx, decoded against the default
    boxes; scores [A, K] the softmax probability of each object class, background dropped)."""
    boxes = box_ops.decode(deltas.astype(jnp.float32), dboxes, VARIANCE_WEIGHTS)
    return boxes, jax.nn.softmax(logits.astype(jnp.float32), axis=-1)[:, 1:]
