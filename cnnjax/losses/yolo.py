"""YOLO v1's loss (Redmon et al. 2016, eq. 3) as a pure function of one image's output grid and
its padded ground truth, and the decoding of that grid into scored boxes.

Output layout. The network's output for one image is [S, S, B * 5 + C]: per cell, B predictors
of (x, y, sqrt_w, sqrt_h, confidence) then C class scores, all linear (the paper's last
layer). x, y are the box centre's offset inside its cell, in cell units; sqrt_w, sqrt_h are
the square roots of the box size as a fraction of the image (darknet's `sqrt=1`): the network
predicts the root itself, so no square root of a prediction is ever taken and a zero or
negative output is a zero-size box, never a NaN. A predictor's box is
((i + y) / S, (j + x) / S) centred in cell (i, j) with height sqrt_h^2 and width sqrt_w^2.

Targets. An object belongs to the cell holding its centre (the largest object when several
centres share a cell: a YOLO v1 cell predicts one class); of that cell's B predictors the one
whose current box overlaps the object most is "responsible" (the choice and the IoU carry no
gradient). With lambda_coord = 5 and lambda_noobj = 0.5, summed over the image:

  loss_xy    = lambda_coord * sum_resp (x - x*)^2 + (y - y*)^2
  loss_wh    = lambda_coord * sum_resp (sqrt_w - sqrt(w*))^2 + (sqrt_h - sqrt(h*))^2
  loss_obj   = sum_resp (C - IoU(box, object))^2          (the confidence target is the IoU)
  loss_noobj = lambda_noobj * sum_{not resp} C^2          (every other predictor of every cell)
  loss_cls   = sum_{cells with an object} sum_c (p_c - [c = class])^2
"""

import jax
import jax.numpy as jnp

TERMS = ("loss_xy", "loss_wh", "loss_obj", "loss_noobj", "loss_cls")


def split_output(out, boxes_per_cell: int, num_classes: int):
    """[S, S, B * 5 + C] -> (xy [S, S, B, 2] as (x, y), sqrt_wh [S, S, B, 2] as (sqrt_w,
    sqrt_h), confidence [S, S, B], class scores [S, S, C])."""
    s, s2, depth = out.shape
    b, c = boxes_per_cell, num_classes
    if s != s2 or depth != b * 5 + c:
        raise ValueError(
            f"YOLO v1 output must be [S, S, B*5+C] = [S, S, {b * 5 + c}] for B={b}, C={c}; "
            f"got {out.shape}"
        )
    pred = out[..., : b * 5].reshape(s, s, b, 5)
    return pred[..., 0:2], pred[..., 2:4], pred[..., 4], out[..., b * 5 :]


def cell_boxes(xy, sqrt_wh):
    """Predicted boxes [S, S, B, 4] normalised (y1, x1, y2, x2) from `split_output`'s xy and
    sqrt_wh."""
    s = xy.shape[0]
    rows = jnp.arange(s, dtype=jnp.float32)[:, None, None]
    cols = jnp.arange(s, dtype=jnp.float32)[None, :, None]
    cy, cx = (rows + xy[..., 1]) / s, (cols + xy[..., 0]) / s
    h, w = jnp.square(sqrt_wh[..., 1]), jnp.square(sqrt_wh[..., 0])
    return jnp.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], axis=-1)


def _pair_iou(a, b):
    """Element-wise IoU of broadcastable [..., 4] boxes; 0 where the union is empty."""
    ih = jnp.maximum(jnp.minimum(a[..., 2], b[..., 2]) - jnp.maximum(a[..., 0], b[..., 0]), 0)
    iw = jnp.maximum(jnp.minimum(a[..., 3], b[..., 3]) - jnp.maximum(a[..., 1], b[..., 1]), 0)
    inter = ih * iw
    area = lambda x: jnp.maximum(x[..., 2] - x[..., 0], 0) * jnp.maximum(x[..., 3] - x[..., 1], 0)
    union = area(a) + area(b) - inter
    return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)


def assign_cells(boxes, classes, valid, grid: int):
    """Ground truth -> per-cell targets.

    boxes: [G, 4] normalised (y1, x1, y2, x2); classes: [G] int; valid: [G] bool.
    Returns (has_object [S, S] bool, target box [S, S, 4], target class [S, S] int32): the
    largest valid object whose centre lies in the cell (zeros where none).
    """
    cy = (boxes[:, 0] + boxes[:, 2]) / 2
    cx = (boxes[:, 1] + boxes[:, 3]) / 2
    i = jnp.clip(jnp.floor(cy * grid), 0, grid - 1).astype(jnp.int32)
    j = jnp.clip(jnp.floor(cx * grid), 0, grid - 1).astype(jnp.int32)
    cell = i * grid + j  # [G]
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    here = (cell[None, :] == jnp.arange(grid * grid)[:, None]) & valid[None, :]  # [S*S, G]
    pick = jnp.argmax(jnp.where(here, area[None, :] + 1.0, 0.0), axis=1)
    has = here.any(axis=1)
    target = jnp.where(has[:, None], boxes[pick], 0.0)
    cls = jnp.where(has, classes[pick], 0).astype(jnp.int32)
    return has.reshape(grid, grid), target.reshape(grid, grid, 4), cls.reshape(grid, grid)


def yolo_v1_loss(
    out,
    boxes,
    classes,
    valid,
    *,
    boxes_per_cell: int = 2,
    num_classes: int = 20,
    lambda_coord: float = 5.0,
    lambda_noobj: float = 0.5,
) -> dict:
    """YOLO v1's loss terms of one image (see the module docstring).

    out: [S, S, B * 5 + C] float; boxes: [G, 4] normalised (y1, x1, y2, x2) ground truth;
    classes: [G] int in [0, C); valid: [G] bool (False on padding rows).
    Returns {name: [] float32} for the names in TERMS (each already weighted); their sum is
    the image's loss. No NaN for zero-size boxes, empty images or any finite output.
    """
    out = out.astype(jnp.float32)
    s = out.shape[0]
    xy, sqrt_wh, conf, cls_scores = split_output(out, boxes_per_cell, num_classes)
    has, target, target_cls = assign_cells(boxes.astype(jnp.float32), classes, valid, s)
    pred = cell_boxes(xy, sqrt_wh)  # [S, S, B, 4]
    iou = jax.lax.stop_gradient(_pair_iou(pred, target[:, :, None, :]))  # [S, S, B]
    best = jnp.argmax(iou, axis=-1)
    resp = (jax.nn.one_hot(best, boxes_per_cell) > 0) & has[..., None]  # [S, S, B]
    rows = jnp.arange(s, dtype=jnp.float32)[:, None]
    cols = jnp.arange(s, dtype=jnp.float32)[None, :]
    t_cy = (target[..., 0] + target[..., 2]) / 2 * s - rows  # offset in cell units
    t_cx = (target[..., 1] + target[..., 3]) / 2 * s - cols
    t_xy = jnp.stack([t_cx, t_cy], axis=-1)[:, :, None, :]
    t_h = jnp.maximum(target[..., 2] - target[..., 0], 0.0)
    t_w = jnp.maximum(target[..., 3] - target[..., 1], 0.0)
    t_sqrt = jnp.sqrt(jnp.stack([t_w, t_h], axis=-1))[:, :, None, :]
    r = resp.astype(jnp.float32)
    onehot = jax.nn.one_hot(target_cls, num_classes)
    return {
        "loss_xy": lambda_coord * jnp.sum(r[..., None] * jnp.square(xy - t_xy)),
        "loss_wh": lambda_coord * jnp.sum(r[..., None] * jnp.square(sqrt_wh - t_sqrt)),
        "loss_obj": jnp.sum(r * jnp.square(conf - iou)),
        "loss_noobj": lambda_noobj * jnp.sum((1.0 - r) * jnp.square(conf)),
        "loss_cls": jnp.sum(has[..., None] * jnp.square(cls_scores - onehot)),
    }


def decode(out, boxes_per_cell: int, num_classes: int):
    """One image's grid -> (boxes [S*S*B, 4] normalised (y1, x1, y2, x2), class-specific
    scores [S*S*B, C] = confidence * class score, the paper's test-time score)."""
    xy, sqrt_wh, conf, cls_scores = split_output(out.astype(jnp.float32), boxes_per_cell,
                                                 num_classes)  # fmt: skip
    boxes = cell_boxes(xy, sqrt_wh).reshape(-1, 4)
    scores = conf[..., None] * cls_scores[:, :, None, :]  # [S, S, B, C]
    return boxes, scores.reshape(-1, num_classes)
