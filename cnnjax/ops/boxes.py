"""Box arithmetic for the detectors (YOLO v1, R-CNN to Faster R-CNN, SSD): formats, IoU / GIoU,
the Faster R-CNN box coder, anchors, IoU-threshold matching and balanced sampling.

Conventions. A box is `(y1, x1, y2, x2)` in **pixels** of the network input, float32: continuous
coordinates in which pixel row r spans [r, r + 1), so the dataset's normalised boxes
(`digits_scenes`: `(y1, x1, y2, x2)` in [0, 1] with pixel edges, see cnnjax/data/geometry.py)
become pixels by `to_pixels(boxes, (H, W))`, exactly. `cxcywh` is `(cx, cy, w, h)` in the
same units (YOLO, SSD); torchvision's `(x1, y1, x2, y2)` is reached with `yxyx_to_xyxy`.
Boxes are `[..., 4]`; the functions work on one image, and a batch is a `jax.vmap` at the call
site. Ground truth is padded to a static `[G, 4]` with a `valid [G]` bool mask. Every shape is
static, so everything here runs under `jit`.
"""

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

BACKGROUND, IGNORE = -1, -2  # `match` labels (torchvision's Matcher: below low / between)


def _check_boxes(b, what: str):
    if b.ndim < 1 or b.shape[-1] != 4:
        raise ValueError(f"{what} must have shape [..., 4], got {tuple(b.shape)}")


def _fraction(v, what: str) -> float | None:
    """Checks a threshold in [0, 1] when it is concrete; a traced one passes unchecked."""
    try:
        v = float(v)
    except TypeError:  # a tracer (jax.errors.ConcretizationTypeError is a TypeError)
        return None
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{what} must lie in [0, 1], got {v!r}")
    return v


def _hw(image_hw, what: str) -> tuple[float, float]:
    hw = tuple(image_hw)
    if len(hw) != 2 or min(hw) <= 0:
        raise ValueError(f"{what} must be a positive (height, width), got {image_hw!r}")
    return hw


# --- formats --------------------------------------------------------------------------------


def yxyx_to_xyxy(boxes):
    """[..., 4] (y1, x1, y2, x2) -> [..., 4] (x1, y1, x2, y2) (torchvision's order)."""
    _check_boxes(boxes, "yxyx_to_xyxy: boxes")
    return boxes[..., jnp.array([1, 0, 3, 2])]


def xyxy_to_yxyx(boxes):
    """[..., 4] (x1, y1, x2, y2) -> [..., 4] (y1, x1, y2, x2); the same swap as yxyx_to_xyxy."""
    _check_boxes(boxes, "xyxy_to_yxyx: boxes")
    return boxes[..., jnp.array([1, 0, 3, 2])]


def yxyx_to_cxcywh(boxes):
    """[..., 4] (y1, x1, y2, x2) -> [..., 4] (cx, cy, w, h), torchvision's 'cxcywh'."""
    _check_boxes(boxes, "yxyx_to_cxcywh: boxes")
    y1, x1, y2, x2 = jnp.moveaxis(boxes, -1, 0)
    return jnp.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], axis=-1)


def cxcywh_to_yxyx(boxes):
    """[..., 4] (cx, cy, w, h) -> [..., 4] (y1, x1, y2, x2)."""
    _check_boxes(boxes, "cxcywh_to_yxyx: boxes")
    cx, cy, w, h = jnp.moveaxis(boxes, -1, 0)
    return jnp.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], axis=-1)


def to_pixels(boxes, image_hw: Sequence[float]):
    """Normalised [..., 4] (y1, x1, y2, x2) in [0, 1] -> pixels: y * H, x * W."""
    _check_boxes(boxes, "to_pixels: boxes")
    h, w = _hw(image_hw, "to_pixels image_hw")
    return boxes * jnp.array([h, w, h, w], boxes.dtype)


def to_normalized(boxes, image_hw: Sequence[float]):
    """Pixel [..., 4] (y1, x1, y2, x2) -> normalised: y / H, x / W (inverse of to_pixels)."""
    _check_boxes(boxes, "to_normalized: boxes")
    h, w = _hw(image_hw, "to_normalized image_hw")
    return boxes / jnp.array([h, w, h, w], boxes.dtype)


def clip_to_image(boxes, image_hw: Sequence[float]):
    """[..., 4] pixel boxes clipped to the image: y to [0, H], x to [0, W]
    (torchvision.ops.clip_boxes_to_image)."""
    _check_boxes(boxes, "clip_to_image: boxes")
    h, w = _hw(image_hw, "clip_to_image image_hw")
    return jnp.clip(boxes, 0.0, jnp.array([h, w, h, w], boxes.dtype))


# --- overlaps -------------------------------------------------------------------------------


def area(boxes):
    """[..., 4] -> [...] (y2 - y1) * (x2 - x1), 0 where a box is empty or inverted."""
    _check_boxes(boxes, "area: boxes")
    return jnp.maximum(boxes[..., 2] - boxes[..., 0], 0) * jnp.maximum(
        boxes[..., 3] - boxes[..., 1], 0
    )


def _safe_div(num, den):
    """num / den where den > 0, else 0, with finite gradients on both branches."""
    ok = den > 0
    return jnp.where(ok, num / jnp.where(ok, den, 1), 0)


def _inter_union(a, b):
    """a [N, 4], b [M, 4] -> (intersection [N, M], union [N, M])."""
    lo = jnp.maximum(a[:, None, :2], b[None, :, :2])
    hi = jnp.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = jnp.prod(jnp.maximum(hi - lo, 0), axis=-1)
    return inter, area(a)[:, None] + area(b)[None, :] - inter


def iou_matrix(a, b):
    """Pairwise IoU: a [N, 4], b [M, 4] -> [N, M] float (torchvision.ops.box_iou).

    A pair whose union is empty (two zero-area boxes) has IoU 0, never NaN, and so does its
    gradient.
    """
    _check_boxes(a, "iou_matrix: a")
    _check_boxes(b, "iou_matrix: b")
    return _safe_div(*_inter_union(a, b))


def giou_matrix(a, b):
    """Pairwise generalised IoU: a [N, 4], b [M, 4] -> [N, M] float in [-1, 1]
    (torchvision.ops.generalized_box_iou): IoU - (C - U) / C with C the enclosing box's area.
    Degenerate pairs (empty union or enclosing box) give finite values, never NaN."""
    _check_boxes(a, "giou_matrix: a")
    _check_boxes(b, "giou_matrix: b")
    inter, union = _inter_union(a, b)
    lo = jnp.minimum(a[:, None, :2], b[None, :, :2])
    hi = jnp.maximum(a[:, None, 2:], b[None, :, 2:])
    hull = jnp.prod(jnp.maximum(hi - lo, 0), axis=-1)
    return _safe_div(inter, union) - _safe_div(hull - union, hull)


# --- Faster R-CNN box coder -----------------------------------------------------------------


def _centre_size(b):
    h, w = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
    return b[..., 0] + 0.5 * h, b[..., 1] + 0.5 * w, h, w


def encode(boxes, anchors, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0)):
    """Regression targets of `boxes` relative to `anchors` (torchvision's BoxCoder.encode_single
    with the coordinates in yxyx order).

    boxes, anchors: [..., 4] (y1, x1, y2, x2), broadcastable; anchors need positive sizes.
    weights: (wy, wx, wh, ww), e.g. (10, 10, 5, 5) for Faster R-CNN's box head.
    Returns [..., 4] (dy, dx, dh, dw) = (wy * (cy - cy_a) / h_a, wx * (cx - cx_a) / w_a,
    wh * log(h / h_a), ww * log(w / w_a)). A box of zero height or width (a padded ground-truth
    row) gets a very negative but finite log term, so masking it out leaves no NaN behind.
    """
    _check_boxes(boxes, "encode: boxes")
    _check_boxes(anchors, "encode: anchors")
    wy, wx, wh, ww = weights
    cy, cx, h, w = _centre_size(boxes)
    acy, acx, ah, aw = _centre_size(anchors)
    tiny = jnp.finfo(jnp.result_type(boxes, jnp.float32)).tiny
    return jnp.stack(
        [
            wy * (cy - acy) / ah,
            wx * (cx - acx) / aw,
            wh * jnp.log(jnp.maximum(h / ah, tiny)),
            ww * jnp.log(jnp.maximum(w / aw, tiny)),
        ],
        axis=-1,
    )


def decode(
    deltas,
    anchors,
    weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
    clip: float = math.log(1000.0 / 16),
):
    """Inverse of `encode` (torchvision's BoxCoder.decode_single, yxyx order).

    deltas: [..., 4] (dy, dx, dh, dw); anchors: [..., 4] (y1, x1, y2, x2), broadcastable;
    weights: (wy, wx, wh, ww). dh / wh and dw / ww are clipped from above at `clip` before the
    exp, so a wild prediction stays finite. Returns [..., 4] (y1, x1, y2, x2), not clipped to
    the image (see clip_to_image).
    """
    _check_boxes(deltas, "decode: deltas")
    _check_boxes(anchors, "decode: anchors")
    wy, wx, wh, ww = weights
    acy, acx, ah, aw = _centre_size(anchors)
    cy = deltas[..., 0] / wy * ah + acy
    cx = deltas[..., 1] / wx * aw + acx
    h = jnp.exp(jnp.minimum(deltas[..., 2] / wh, clip)) * ah
    w = jnp.exp(jnp.minimum(deltas[..., 3] / ww, clip)) * aw
    return jnp.stack([cy - 0.5 * h, cx - 0.5 * w, cy + 0.5 * h, cx + 0.5 * w], axis=-1)


# --- anchors, matching, sampling ------------------------------------------------------------


def anchors(
    feature_hw: Sequence[int],
    stride: int | Sequence[int],
    scales: Sequence[float],
    ratios: Sequence[float] = (0.5, 1.0, 2.0),
    offset: float = 0.5,
):
    """Anchor boxes of one feature map: [H * W * A, 4] float32 (y1, x1, y2, x2) pixels.

    feature_hw: (H, W) of the map; stride: pixels per cell, int or (sy, sx); scales: anchor
    sizes sqrt(h * w) in pixels; ratios: aspect ratios h / w. A = len(ratios) * len(scales).
    The anchor of cell (i, j) is centred at ((i + offset) * sy, (j + offset) * sx), with
    h = scale * sqrt(ratio), w = scale / sqrt(ratio). Rows run over cells in row-major order,
    then ratios, then scales (torchvision's AnchorGenerator order). offset=0.5 centres anchors
    on their cells; offset=0 is torchvision's convention (which also rounds the sizes to even
    pixels: the two agree exactly when the half-sizes are integers).
    """
    (fh, fw), (sy, sx) = tuple(feature_hw), ((stride,) * 2 if isinstance(stride, int) else stride)
    if min(fh, fw) < 1 or min(sy, sx) <= 0 or not scales or not ratios:
        raise ValueError(
            f"anchors needs feature_hw >= 1, stride > 0 and some scales and ratios, got "
            f"feature_hw={feature_hw!r}, stride={stride!r}, scales={scales!r}, ratios={ratios!r}"
        )
    if min(scales) <= 0 or min(ratios) <= 0:
        raise ValueError(f"anchor scales and ratios must be > 0, got {scales!r}, {ratios!r}")
    root = jnp.sqrt(jnp.asarray(ratios, jnp.float32))[:, None]
    s = jnp.asarray(scales, jnp.float32)[None, :]
    half = jnp.stack([(root * s).ravel(), (s / root).ravel()], axis=-1) / 2  # [A, (h, w)]
    cy = (jnp.arange(fh, dtype=jnp.float32) + offset) * sy
    cx = (jnp.arange(fw, dtype=jnp.float32) + offset) * sx
    centre = jnp.stack(jnp.meshgrid(cy, cx, indexing="ij"), axis=-1).reshape(-1, 1, 2)
    return jnp.concatenate([centre - half, centre + half], axis=-1).reshape(-1, 4)


def match(iou, valid, fg_thresh: float, bg_thresh: float, allow_low_quality: bool = False):
    """Assigns each anchor a ground-truth box by IoU (torchvision's Matcher).

    iou: [G, A] float, ground truth x anchors (iou_matrix(gt, anchors)); valid: [G] bool, False
    on padded ground-truth rows, which never match. Returns [A] int32: the matched row in
    [0, G) where the best IoU is >= fg_thresh, BACKGROUND (-1) where it is < bg_thresh, IGNORE
    (-2) in between (and -1 everywhere when no row is valid). allow_low_quality: each valid
    row's best anchors (ties included) are matched to their own best row even below fg_thresh,
    as in torchvision, except that a row overlapping no anchor at all (best IoU 0) adds no
    matches; torchvision would then match every zero-IoU anchor.
    """
    if iou.ndim != 2 or iou.shape[0] < 1 or valid.shape != iou.shape[:1]:
        raise ValueError(
            f"match needs iou [G, A] with G >= 1 and valid [G], got {iou.shape}, {valid.shape}"
        )
    fg, bg = _fraction(fg_thresh, "fg_thresh"), _fraction(bg_thresh, "bg_thresh")
    if fg is not None and bg is not None and bg > fg:
        raise ValueError(f"match needs bg_thresh <= fg_thresh, got {bg_thresh!r} > {fg_thresh!r}")
    q = jnp.where(valid[:, None], iou, -1.0)  # padded rows lose every argmax
    best_row, best = jnp.argmax(q, axis=0), jnp.max(q, axis=0)
    out = jnp.where(best >= fg_thresh, best_row, jnp.where(best >= bg_thresh, IGNORE, BACKGROUND))
    if allow_low_quality:
        per_row = jnp.max(q, axis=1, keepdims=True)
        top = (q == per_row) & (per_row > 0)
        out = jnp.where(jnp.any(top, axis=0), best_row, out)
    return out.astype(jnp.int32)


def sample(matches, key, batch_size_per_image: int, positive_fraction: float):
    """Balanced random sample of anchors (torchvision's BalancedPositiveNegativeSampler).

    matches: [A] int from `match` (>= 0 positive, -1 negative, -2 never sampled); key: a
    jax.random key; batch_size_per_image, positive_fraction: static int >= 1, float in [0, 1].
    Takes P = min(#positives, int(B * positive_fraction)) positives and
    min(#negatives, B - P) negatives, each uniformly at random without replacement, with
    B = batch_size_per_image. Returns (indices [B] int32, positive [B] bool, valid [B] bool):
    slots [0, P) hold positives, the next ones negatives, and the rest are padding
    (index -1, valid False).
    """
    if not isinstance(batch_size_per_image, int) or batch_size_per_image < 1:
        raise ValueError(f"batch_size_per_image must be an int >= 1, got {batch_size_per_image!r}")
    _fraction(positive_fraction, "positive_fraction")
    if matches.ndim != 1:
        raise ValueError(f"sample needs matches of shape [A], got {matches.shape}")
    n, b = matches.shape[0], batch_size_per_image
    pos, neg = matches >= 0, matches == BACKGROUND
    perm = jax.random.permutation(key, n)
    # A stable sort of a random permutation by pool membership: each pool in random order.
    pos_order = perm[jnp.argsort(~pos[perm], stable=True)]
    neg_order = perm[jnp.argsort(~neg[perm], stable=True)]
    n_pos = jnp.minimum(jnp.sum(pos), int(b * positive_fraction))
    n_neg = jnp.minimum(jnp.sum(neg), b - n_pos)
    slot = jnp.arange(b)
    is_pos, valid = slot < n_pos, slot < n_pos + n_neg
    picked = jnp.where(
        is_pos, pos_order[jnp.minimum(slot, n - 1)], neg_order[jnp.clip(slot - n_pos, 0, n - 1)]
    )
    return jnp.where(valid, picked, -1).astype(jnp.int32), is_pos & valid, valid
