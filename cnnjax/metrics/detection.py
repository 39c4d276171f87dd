"""Object detection metrics on the host (numpy): PASCAL VOC average precision as the devkit's
VOCevaldet.m computes it, COCO's twelve bbox numbers (a thin, quiet wrapper over pycocotools)
and `DetectionMetrics`, the accumulator a detection task's evaluation feeds.

Conventions (documented because implementations differ):
- Boxes are (y1, x1, y2, x2) floats in continuous coordinates (pixel row r spans [r, r+1)), so
  an area is (y2 - y1) * (x2 - x1), with no "+1": the devkit's +1 is for inclusive integer
  pixel indices, which these are not. COCO boxes are [x, y, w, h]; `to_coco` converts.
- VOC matching follows VOCevaldet.m. Per class, detections are ranked by descending score
  (a stable sort: ties keep list order, images in list order, then order within the image).
  Each takes the ground truth box of its image and class with the highest IoU among *all* of
  them (matched and difficult ones included; the first on ties). If that IoU >= iou_threshold
  (the devkit's `>=`; py-faster-rcnn's voc_eval.py uses `>`) it is a true positive when the box
  is unmatched, ignored (neither TP nor FP) when the box is difficult, and a false positive (a
  duplicate) when the box is already matched; below the threshold it is a false positive. So,
  unlike COCO, a detection is never passed on to a second-best unmatched box.
- recall = tp / (non-difficult gt), precision = tp / max(tp + fp, eps). AP (`voc_ap`): VOC2010+
  "all-point", the area under the monotone precision envelope; VOC07 "11-point", the mean over
  t = k/10 (k = 0..10) of the best precision at recall >= t. The thresholds are exactly k/10:
  the devkit's `0:0.1:1` and py-faster-rcnn's `np.arange(0, 1.1, 0.1)` put some of them one
  ulp above (0.30000000000000004), so there a recall of exactly 3/10 does not reach "0.3".
- A class without non-difficult ground truth has no AP (NaN) and is left out of `map`, even
  when it has detections. Detections on difficult boxes are dropped from a class's curve.
- COCO numbers are pycocotools' COCOeval(gt, dt, 'bbox').stats: 101-point AP averaged over
  IoU 0.50:0.05:0.95, -1 where an area range has no ground truth, and maxDets (1, 10, 100)
  capping the detections per image *and category*. Two traps are handled: COCOeval takes a
  match to the annotation with id 0 for "unmatched" (it stores matched ids and tests them for
  truth), so `coco_evaluate` renumbers annotation ids 1..N on a copy; `loadRes` fails on an
  empty detection list, so no detections are evaluated through an empty results object (AP
  and AR 0 where there is ground truth, -1 where there is none).
"""

import contextlib
import io
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cnnjax.metrics.accumulate import Accumulator

COCO_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


_EMPTY = np.zeros(0, np.int64)


class PRCurve(NamedTuple):
    """One class's ranked detections: recall, precision, scores [D] float64 (descending score,
    detections on difficult boxes dropped) and num_gt (its non-difficult ground truth)."""

    recall: np.ndarray
    precision: np.ndarray
    scores: np.ndarray
    num_gt: int


# ----------------------------------------------------------------------------- input checks


def _boxes(value, name: str) -> np.ndarray:
    """value [N, 4] (y1, x1, y2, x2) -> float64, checked finite and not inverted."""
    boxes = np.asarray(value, np.float64)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name} must be [N, 4] (y1, x1, y2, x2), got shape {boxes.shape}")
    bad = ~np.isfinite(boxes).all(1) | (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"{name}[{i}] = {boxes[i].tolist()} is not a box: (y1, x1, y2, x2) must be finite "
            "with y2 >= y1 and x2 >= x1"
        )
    return boxes


def _classes(value, n: int, name: str, num_classes: int | None) -> np.ndarray:
    """value [n] integer class ids in [0, num_classes) (any number type) -> int64."""
    c = np.asarray(value)
    c = c.reshape(0) if c.size == 0 else c
    if c.shape != (n,):
        raise ValueError(f"{name} must be [{n}] (one id per box), got shape {c.shape}")
    if c.size and (not np.isfinite(c).all() or (c != np.round(c)).any()):
        raise ValueError(f"{name} must hold integer class ids, got {c.tolist()}")
    c = c.astype(np.int64)
    bad = (c < 0) | (c >= (num_classes if num_classes is not None else np.inf))
    if bad.any():
        want = f"[0, {num_classes})" if num_classes is not None else ">= 0"
        raise ValueError(f"{name} holds class id {int(c[bad][0])}, want {want}")
    return c


def _scores(value, n: int, name: str) -> np.ndarray:
    """value [n] finite scores (any sign) -> float64."""
    s = np.asarray(value, np.float64)
    s = s.reshape(0) if s.size == 0 else s
    if s.shape != (n,):
        raise ValueError(f"{name} must be [{n}] (one score per box), got shape {s.shape}")
    if not np.isfinite(s).all():
        i = int(np.argmax(~np.isfinite(s)))
        raise ValueError(f"{name}[{i}] = {s[i]} is not a finite score")
    return s


def _ground_truth(entry: dict, i: int, num_classes: int | None):
    """One image's {'boxes' [G, 4], 'classes' [G], optional 'difficult' [G]} -> checked arrays."""
    boxes = _boxes(entry["boxes"], f"ground_truth[{i}]['boxes']")
    g = len(boxes)
    classes = _classes(entry["classes"], g, f"ground_truth[{i}]['classes']", num_classes)
    difficult = np.asarray(entry.get("difficult", np.zeros(g, bool)), bool).reshape(-1)
    if difficult.shape != (g,):
        raise ValueError(f"ground_truth[{i}]['difficult'] must be [{g}], got {difficult.shape}")
    return boxes, classes, difficult


def _detections(entry: dict, i: int, num_classes: int | None):
    """One image's {'boxes' [D, 4], 'scores' [D], 'classes' [D]} -> checked arrays."""
    boxes = _boxes(entry["boxes"], f"detections[{i}]['boxes']")
    scores = _scores(entry["scores"], len(boxes), f"detections[{i}]['scores']")
    classes = _classes(entry["classes"], len(boxes), f"detections[{i}]['classes']", num_classes)
    return boxes, scores, classes


def _images(ground_truth: list, detections: list, num_classes: int | None):
    if len(ground_truth) != len(detections):
        raise ValueError(
            f"ground_truth has {len(ground_truth)} images but detections {len(detections)}; "
            "they must be aligned, one entry per image"
        )
    gts = [_ground_truth(e, i, num_classes) for i, e in enumerate(ground_truth)]
    return gts, [_detections(e, i, num_classes) for i, e in enumerate(detections)]


def _check_iou_threshold(iou_threshold: float) -> None:
    if not 0 < iou_threshold <= 1:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")


# ----------------------------------------------------------------------------- VOC


def iou_matrix(a, b) -> np.ndarray:
    """a [N, 4], b [M, 4] (y1, x1, y2, x2) -> [N, M] float64 IoU (0 where the union is empty)."""
    return _iou(_boxes(a, "a"), _boxes(b, "b"))


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """`iou_matrix` of checked float64 boxes."""
    top = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom = np.minimum(a[:, None, 2:], b[None, :, 2:])
    size = np.clip(bottom - top, 0, None)
    inter = size[..., 0] * size[..., 1]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def _match_image(gt_boxes, gt_difficult, det_boxes, iou_threshold: float) -> np.ndarray:
    """One image and class: gt_boxes [G, 4], gt_difficult [G] bool, det_boxes [D, 4] ranked by
    descending score -> [D] int8: 1 true positive, 0 false positive, -1 ignored (difficult)."""
    outcome = np.zeros(len(det_boxes), np.int8)
    if len(gt_boxes) == 0 or len(det_boxes) == 0:
        return outcome
    iou = _iou(det_boxes, gt_boxes)
    best = iou.argmax(1)
    matched = np.zeros(len(gt_boxes), bool)
    for d in np.flatnonzero(iou[np.arange(len(det_boxes)), best] >= iou_threshold):
        g = best[d]
        if gt_difficult[g]:
            outcome[d] = -1
        elif not matched[g]:
            outcome[d], matched[g] = 1, True
    return outcome


def _ranked_outcomes(gts, dets, iou_threshold: float) -> dict[int, tuple]:
    """-> {class id: (scores [D], outcomes [D] as `_match_image`, both ranked by descending
    score; num_gt)} for every class in the ground truth or the detections."""
    gb, gc, gd, gi = _flatten(gts, (np.zeros((0, 4)), _EMPTY, np.zeros(0, bool)))
    db, ds, dc, di = _flatten(dets, (np.zeros((0, 4)), np.zeros(0), _EMPTY))
    rank = np.lexsort((-ds, dc))  # by class, then score; lexsort is stable: ties keep list order
    db, ds, dc, di = db[rank], ds[rank], dc[rank], di[rank]
    outcomes = np.zeros(len(ds), np.int8)  # a detection with no gt of its class: a FP
    det_keys = dc * len(gts) + di
    by_key = np.argsort(det_keys, kind="stable")  # ranked within each (class, image)
    gt_groups = _groups(gc * len(gts) + gi)
    keys = np.fromiter(gt_groups, np.int64, len(gt_groups))
    starts = np.searchsorted(det_keys[by_key], keys, "left")
    ends = np.searchsorted(det_keys[by_key], keys, "right")
    for g, start, end in zip(gt_groups.values(), starts, ends, strict=True):
        if end > start:
            d = by_key[start:end]
            outcomes[d] = _match_image(gb[g], gd[g], db[d], iou_threshold)
    ranked = {}
    for k in np.union1d(gc, dc).tolist():  # rows are sorted by class: slices
        d = slice(np.searchsorted(dc, k, "left"), np.searchsorted(dc, k, "right"))
        ranked[k] = ds[d], outcomes[d], int(((gc == k) & ~gd).sum())
    return ranked


def _flatten(images: list[tuple], empty: tuple) -> tuple[np.ndarray, ...]:
    """Per-image tuples of arrays [N_i, ...] -> each concatenated over images ([sum N_i, ...],
    starting from `empty`) and the image index of every row [sum N_i]."""
    columns = [np.concatenate([e, *(image[j] for image in images)]) for j, e in enumerate(empty)]
    index = np.repeat(np.arange(len(images)), [len(image[0]) for image in images])
    return (*columns, index.astype(np.int64))


def _groups(keys: np.ndarray) -> dict[int, np.ndarray]:
    """keys [N] int -> {key: the indices holding it, ascending}."""
    if not len(keys):
        return {}
    order = np.argsort(keys, kind="stable")
    ids, starts = np.unique(keys[order], return_index=True)
    ends = [*starts[1:].tolist(), len(keys)]
    return {k: order[a:b] for k, a, b in zip(ids.tolist(), starts.tolist(), ends, strict=True)}


_NONE = (np.zeros(0), np.zeros(0, np.int8), 0)  # a class in neither gt nor detections


def _curve(scores, outcomes, num_gt: int) -> PRCurve:
    keep = outcomes >= 0
    tp = np.cumsum(outcomes[keep] == 1, dtype=np.float64)
    fp = np.cumsum(outcomes[keep] == 0, dtype=np.float64)
    recall = tp / num_gt if num_gt else np.full_like(tp, np.nan)
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return PRCurve(recall, precision, scores[keep], num_gt)


def voc_ap(recall, precision, use_07_metric: bool = False) -> float:
    """recall, precision [D] (a ranked list's cumulative values, recall non-decreasing) -> AP:
    VOC07 11-point interpolation, or VOC2010+ area under the monotone precision envelope."""
    recall, precision = np.asarray(recall, np.float64), np.asarray(precision, np.float64)
    if recall.ndim != 1 or recall.shape != precision.shape:
        raise ValueError(f"recall {recall.shape} and precision {precision.shape} must be [D]")
    if (np.diff(recall) < 0).any() or np.isnan(recall).any():
        raise ValueError(f"recall must be non-decreasing numbers, got {recall.tolist()}")
    if use_07_metric:
        return float(sum(precision[recall >= t].max(initial=0.0) for t in np.arange(11) / 10) / 11)
    mrec = np.concatenate(([0.0], recall, [1.0]))
    envelope = np.maximum.accumulate(np.concatenate(([0.0], precision, [0.0]))[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * envelope[i + 1]))


def precision_recall_curve(
    ground_truth: list, detections: list, class_id: int, *, iou_threshold: float = 0.5
) -> PRCurve:
    """The ranked precision/recall of class `class_id` (formats as `voc_evaluate`) -> PRCurve
    (recall all NaN when the class has no non-difficult ground truth)."""
    _check_iou_threshold(iou_threshold)
    gts, dets = _images(ground_truth, detections, None)
    return _curve(*_ranked_outcomes(gts, dets, iou_threshold).get(class_id, _NONE))


def voc_evaluate(
    ground_truth: list,
    detections: list,
    *,
    num_classes: int,
    iou_threshold: float = 0.5,
    use_07_metric: bool = False,
) -> dict:
    """PASCAL VOC detection AP per class (the module docstring has the rules).

    ground_truth: one dict per image {'boxes': [G, 4] float (y1, x1, y2, x2), 'classes': [G]
    int in [0, num_classes), optional 'difficult': [G] bool}; detections: one dict per image
    (aligned) {'boxes': [D, 4], 'scores': [D] float, 'classes': [D] int}.
    -> {'map': float (NaN if no class has ground truth), 'per_class_ap': [K] floats (NaN for a
    class without non-difficult gt), 'num_gt': [K] ints, 'curves': [K] PRCurve}.
    """
    _check_iou_threshold(iou_threshold)
    gts, dets = _images(ground_truth, detections, num_classes)
    ranked = _ranked_outcomes(gts, dets, iou_threshold)
    curves = [_curve(*ranked.get(k, _NONE)) for k in range(num_classes)]
    aps = [
        voc_ap(c.recall, c.precision, use_07_metric) if c.num_gt else float("nan") for c in curves
    ]
    present = [ap for ap in aps if not math.isnan(ap)]
    return {
        "map": float(np.mean(present)) if present else float("nan"),
        "per_class_ap": aps,
        "num_gt": [c.num_gt for c in curves],
        "curves": curves,
    }


def precision_recall_at(
    ground_truth: list, detections: list, *, score_threshold: float, iou_threshold: float = 0.5
) -> tuple[float, float]:
    """Precision and recall over all classes of the detections scoring >= score_threshold,
    matched per class by the VOC rules (formats as `voc_evaluate`) -> (precision, recall):
    precision 0 with no such detection, recall NaN with no non-difficult ground truth."""
    _check_iou_threshold(iou_threshold)
    gts, dets = _images(ground_truth, detections, None)
    tp = fp = num_gt = 0
    for scores, outcomes, n in _ranked_outcomes(gts, dets, iou_threshold).values():
        kept = outcomes[scores >= score_threshold]
        tp, fp, num_gt = tp + int((kept == 1).sum()), fp + int((kept == 0).sum()), num_gt + n
    return tp / max(tp + fp, 1), tp / num_gt if num_gt else float("nan")


# ----------------------------------------------------------------------------- COCO


def _check_coco(ground_truth: dict, detections: list) -> None:
    for key in ("images", "annotations", "categories"):
        if key not in ground_truth:
            raise ValueError(
                f"ground_truth lacks '{key}' (a COCO dict needs images, annotations and categories)"
            )
    needs = {
        "annotation": ("image_id", "category_id", "bbox", "area", "iscrowd"),
        "detection": ("image_id", "category_id", "bbox", "score"),
    }
    images = {im["id"] for im in ground_truth["images"]}
    categories = {c["id"] for c in ground_truth["categories"]}
    for kind, items in (("annotation", ground_truth["annotations"]), ("detection", detections)):
        for i, item in enumerate(items):
            missing = [k for k in needs[kind] if k not in item]
            if missing:
                raise ValueError(f"{kind} {i} ({item}) lacks {missing}")
            x, y, w, h = (float(v) for v in item["bbox"])
            if not (np.isfinite([x, y, w, h]).all() and w >= 0 and h >= 0):
                raise ValueError(
                    f"{kind} {i} has bbox {item['bbox']}; want finite [x, y, w, h], w, h >= 0"
                )
            if item["image_id"] not in images:
                raise ValueError(f"{kind} {i} has image_id {item['image_id']}, not in images")
            if item["category_id"] not in categories:
                raise ValueError(
                    f"{kind} {i} has category_id {item['category_id']}, not in "
                    f"categories {sorted(categories)}"
                )
            if kind == "detection" and not math.isfinite(item["score"]):
                raise ValueError(f"detection {i} has score {item['score']}, not finite")


def _coco_objects(ground_truth: dict, detections: list) -> tuple[COCO, COCO]:
    """-> (gt, dt) COCO objects over copies (pycocotools writes into the dicts it is given),
    annotation ids renumbered 1..N (COCOeval reads a match to id 0 as no match)."""
    gt = COCO()
    annotations = [{**a, "id": i + 1} for i, a in enumerate(ground_truth["annotations"])]
    gt.dataset = {**ground_truth, "annotations": annotations}
    gt.createIndex()
    if detections:
        return gt, gt.loadRes([dict(d) for d in detections])
    dt = COCO()  # what loadRes would build from an empty list, were it not to fail
    dt.dataset = {
        "images": list(gt.dataset["images"]),
        "annotations": [],
        "categories": [dict(c) for c in gt.dataset["categories"]],
    }
    dt.createIndex()
    return gt, dt


def coco_evaluate(ground_truth: dict, detections: list) -> dict[str, float]:
    """COCO bbox metrics. ground_truth: a COCO dict ('images', 'annotations' with image_id,
    category_id, bbox [x, y, w, h], area, iscrowd, and 'categories'); detections: a COCO
    results list of {image_id, category_id, bbox, score} (may be empty). Neither is modified.
    -> {'AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'AR1', 'AR10', 'AR100', 'ARs', 'ARm', 'ARl'}:
    COCOeval(..., 'bbox').stats in that order (-1 where pycocotools has nothing to average)."""
    _check_coco(ground_truth, detections)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(*_coco_objects(ground_truth, detections), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {k: float(v) for k, v in zip(COCO_KEYS, evaluator.stats, strict=True)}


def to_coco(
    ground_truth: list,
    detections: list,
    *,
    class_names: list[str],
    image_hw: tuple[int, int] | None = None,
) -> tuple[dict, list]:
    """Per-image lists (formats as `voc_evaluate`, boxes in pixels) -> (COCO gt dict, COCO
    results list): image ids 1..N in list order (with height and width when `image_hw` is
    given), category k -> id k + 1 named class_names[k], bbox [x1, y1, x2 - x1, y2 - y1],
    area w * h, iscrowd 0, annotation ids 1... COCO has no 'difficult': such boxes raise."""
    gts, dets = _images(ground_truth, detections, len(class_names))
    size = {} if image_hw is None else {"height": int(image_hw[0]), "width": int(image_hw[1])}
    images = [{"id": i + 1, **size} for i in range(len(gts))]
    categories = [{"id": k + 1, "name": str(n)} for k, n in enumerate(class_names)]
    annotations, results = [], []
    for i, ((gb, gc, gd), (db, ds, dc)) in enumerate(zip(gts, dets, strict=True)):
        if gd.any():
            raise ValueError(f"ground_truth[{i}] has difficult boxes, which COCO cannot express")
        for box, c in zip(_xywh(gb), gc, strict=True):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": int(c) + 1,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )
        for box, s, c in zip(_xywh(db), ds, dc, strict=True):
            results.append(
                {"image_id": i + 1, "category_id": int(c) + 1, "bbox": box, "score": float(s)}
            )
    return {"images": images, "annotations": annotations, "categories": categories}, results


def _xywh(boxes: np.ndarray) -> list[list[float]]:
    """[N, 4] (y1, x1, y2, x2) -> N COCO boxes [x, y, w, h] as Python floats."""
    y1, x1, y2, x2 = boxes.T
    return np.stack([x1, y1, x2 - x1, y2 - y1], 1).tolist()


# ----------------------------------------------------------------------------- accumulator

_FILL = {
    "det_boxes": 0.0,
    "det_scores": 0.0,
    "det_classes": 0,
    "det_valid": False,
    "gt_boxes": 0.0,
    "gt_classes": 0,
    "gt_valid": False,
}
_DTYPES = {
    "det_boxes": np.float64,
    "det_scores": np.float64,
    "det_classes": np.int64,
    "det_valid": bool,
    "gt_boxes": np.float64,
    "gt_classes": np.int64,
    "gt_valid": bool,
}


def _stack(parts: list[np.ndarray], key: str) -> np.ndarray:
    """[N_i, W_i, ...] arrays -> [sum N_i, max W_i, ...], padded along axis 1 (as invalid)."""
    if not parts:
        return np.zeros((0, 0, 4) if key.endswith("boxes") else (0, 0), _DTYPES[key])
    width = max(p.shape[1] for p in parts)
    pads = [[(0, 0), (0, width - p.shape[1])] + [(0, 0)] * (p.ndim - 2) for p in parts]
    return np.concatenate(
        [np.pad(p, w, constant_values=_FILL[key]) for p, w in zip(parts, pads, strict=True)]
    )


def _bad_entry(bad: np.ndarray, rows: np.ndarray, key: str, values: np.ndarray, why: str):
    """Raises naming the first flagged entry [b, j] (b the row's index in the batch)."""
    b, j = np.argwhere(bad)[0]
    value = values[b, j].tolist() if values.ndim == 3 else values[b, j].item()
    raise ValueError(f"{key}[{rows[b]}, {j}] = {value} {why}")


def _check_entries(batch: dict, rows: np.ndarray, prefix: str, num_classes: int) -> None:
    """Checks the valid boxes, class ids (and scores) of one side of a batch's real rows."""
    boxes, valid, classes = (batch[f"{prefix}_{k}"] for k in ("boxes", "valid", "classes"))
    inverted = (boxes[..., 2] < boxes[..., 0]) | (boxes[..., 3] < boxes[..., 1])
    box_why = "is not a box: (y1, x1, y2, x2) must be finite with y2 >= y1 and x2 >= x1"
    in_range = (classes >= 0) & (classes < num_classes) & (classes == np.round(classes))
    checks = [
        (f"{prefix}_boxes", boxes, ~np.isfinite(boxes).all(-1) | inverted, box_why),
        (f"{prefix}_classes", classes, ~in_range, f"is not a class id in [0, {num_classes})"),
    ]
    if prefix == "gt":  # ground truth is inside the image; pixel boxes are a caller's bug
        outside = ((boxes < -1e-3) | (boxes > 1 + 1e-3)).any(-1)
        checks.append(("gt_boxes", boxes, outside, "is outside [0, 1]: boxes must be normalised"))
    else:
        scores = batch["det_scores"]
        checks.append(("det_scores", scores, ~np.isfinite(scores), "is not a finite score"))
    for key, values, bad, why in checks:
        if (valid & bad).any():
            _bad_entry(valid & bad, rows, key, values, why)


def _batch(outputs: dict, num_classes: int) -> dict[str, np.ndarray]:
    """A batch of eval outputs -> its real rows (mask > 0), checked and typed as `_DTYPES`."""
    missing = [k for k in (*_DTYPES, "mask") if k not in outputs]
    if missing:
        raise ValueError(f"detection eval outputs lack {missing} (they need {[*_DTYPES, 'mask']})")
    mask = np.asarray(outputs["mask"])
    if mask.ndim != 1:
        raise ValueError(f"mask must be [B], got shape {mask.shape}")
    arrays = {k: np.asarray(outputs[k]) for k in _DTYPES}
    for prefix in ("det", "gt"):
        boxes = arrays[f"{prefix}_boxes"]
        if boxes.ndim != 3 or boxes.shape[0] != len(mask) or boxes.shape[2] != 4:
            raise ValueError(f"{prefix}_boxes must be [B={len(mask)}, N, 4], got {boxes.shape}")
        for key in (k for k in _DTYPES if k.startswith(prefix) and k != f"{prefix}_boxes"):
            if arrays[key].shape != boxes.shape[:2]:
                raise ValueError(
                    f"{key} has shape {arrays[key].shape}; like {prefix}_boxes it must be "
                    f"{boxes.shape[:2]}"
                )
    rows = np.flatnonzero(mask > 0)
    batch = {k: v[rows] for k, v in arrays.items()}
    batch["det_valid"], batch["gt_valid"] = batch["det_valid"] > 0, batch["gt_valid"] > 0
    for prefix in ("det", "gt"):
        _check_entries(batch, rows, prefix, num_classes)
    for key in ("det_classes", "gt_classes"):  # padded entries may hold anything, -1 or NaN
        batch[key] = np.where(batch[key.replace("classes", "valid")], batch[key], 0)
    return {k: v.astype(_DTYPES[k]) for k, v in batch.items()}


class DetectionMetrics(Accumulator):
    """Detection metrics of every real example seen.

    `add` takes a batch of per-example outputs: 'det_boxes' [B, D, 4] float, normalised
    (y1, x1, y2, x2) in [0, 1]; 'det_scores' [B, D] float; 'det_classes' [B, D] int;
    'det_valid' [B, D] (bool or 0/1); 'gt_boxes' [B, M, 4] normalised; 'gt_classes' [B, M] int;
    'gt_valid' [B, M] (1 real, 0 padding); 'mask' [B] (0: a padded example, skipped). The state
    is the real rows stacked ([N, D, 4] ...), so processes merge by concatenation. `result`
    scales boxes to pixels by image_hw and reports VOC AP@0.5 (all-point and 11-point), the
    twelve COCO numbers, and precision/recall at IoU 0.5 of the detections scoring at least
    `score_threshold`.
    """

    def __init__(
        self,
        num_classes: int,
        image_hw: tuple[int, int],
        class_names: list[str] | None = None,
        score_threshold: float = 0.5,
    ):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if len(image_hw) != 2 or min(image_hw) <= 0:
            raise ValueError(f"image_hw must be (height, width) > 0, got {image_hw}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class_names for {num_classes} classes")
        self.num_classes, self.image_hw = num_classes, (int(image_hw[0]), int(image_hw[1]))
        self.class_names = list(class_names or [f"class_{k}" for k in range(num_classes)])
        self.score_threshold = score_threshold
        self._parts: dict[str, list[np.ndarray]] = {k: [] for k in _DTYPES}

    def add(self, outputs: dict[str, np.ndarray]) -> None:
        for key, value in _batch(outputs, self.num_classes).items():
            self._parts[key].append(value)

    def state(self) -> dict[str, np.ndarray]:
        return {key: _stack(parts, key) for key, parts in self._parts.items()}

    def merge_state(self, state: dict[str, np.ndarray]) -> None:
        if set(state) != set(_DTYPES):
            raise ValueError(f"state keys {sorted(state)} are not {sorted(_DTYPES)}")
        for key, value in state.items():
            self._parts[key].append(np.asarray(value, _DTYPES[key]))

    def images(self) -> tuple[list[dict], list[dict]]:
        """-> (ground_truth, detections): per-image lists as `voc_evaluate` takes, in pixels."""
        s = self.state()
        if not len(s["gt_boxes"]):
            raise ValueError("no examples were evaluated (the eval split is empty after masking)")
        scale = np.array(self.image_hw * 2, np.float64)[[0, 1, 0, 1]]
        gts = [
            {"boxes": b[v] * scale, "classes": c[v]}
            for b, c, v in zip(s["gt_boxes"], s["gt_classes"], s["gt_valid"], strict=True)
        ]
        dets = [
            {"boxes": b[v] * scale, "scores": p[v], "classes": c[v]}
            for b, p, c, v in zip(
                s["det_boxes"], s["det_scores"], s["det_classes"], s["det_valid"], strict=True
            )
        ]
        return gts, dets

    def result(self) -> dict:
        gts, dets = self.images()
        voc = voc_evaluate(gts, dets, num_classes=self.num_classes)
        gt_coco, dets_coco = to_coco(
            gts, dets, class_names=self.class_names, image_hw=self.image_hw
        )
        coco = coco_evaluate(gt_coco, dets_coco)
        precision, recall = precision_recall_at(gts, dets, score_threshold=self.score_threshold)
        voc07 = [ap for ap in _voc07(voc["curves"]) if not math.isnan(ap)]
        return {
            "map50": voc["map"],
            "map50_voc07": float(np.mean(voc07)) if voc07 else float("nan"),
            **{f"coco_{key.lower()}": value for key, value in coco.items()},
            "precision50": precision,
            "recall50": recall,
            "per_class_ap50": voc["per_class_ap"],
            "num_examples": len(gts),
        }

    def write_files(self, directory: Path, stem: str) -> list[Path]:
        """Writes <stem>_per_class_ap.md (class, #gt, AP@0.5 VOC and VOC07) and
        <stem>_pr_curves.png (each class's precision-recall curve) -> their paths."""
        voc = voc_evaluate(*self.images(), num_classes=self.num_classes)
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        table, plot = directory / f"{stem}_per_class_ap.md", directory / f"{stem}_pr_curves.png"
        table.write_text(_ap_table(self.class_names, voc))
        _pr_figure(self.class_names, voc).savefig(plot, dpi=100)
        return [table, plot]


def _voc07(curves: list[PRCurve]) -> list[float]:
    return [voc_ap(c.recall, c.precision, True) if c.num_gt else float("nan") for c in curves]


def _ap_table(class_names: list[str], voc: dict) -> str:
    """A markdown table: one row per class (#gt, VOC AP@0.5, VOC07 AP@0.5) and the mean."""
    fmt = lambda v: "n/a" if math.isnan(v) else f"{v:.4f}"
    voc07 = _voc07(voc["curves"])
    rows = ["| class | #gt | AP@0.5 (VOC) | AP@0.5 (VOC07) |", "|---|---:|---:|---:|"]
    for name, n, ap, ap07 in zip(
        class_names, voc["num_gt"], voc["per_class_ap"], voc07, strict=True
    ):
        rows.append(f"| {name} | {n} | {fmt(ap)} | {fmt(ap07)} |")
    present = [ap for ap in voc07 if not math.isnan(ap)]
    mean07 = float(np.mean(present)) if present else float("nan")
    rows.append(f"| **mean** | {sum(voc['num_gt'])} | {fmt(voc['map'])} | {fmt(mean07)} |")
    return "\n".join(rows) + "\n"


def _pr_figure(class_names: list[str], voc: dict):
    """A matplotlib Figure (no pyplot state) with each class's PR curve, its AP in the legend."""
    from matplotlib.figure import Figure  # imported here: only the file writer needs it

    figure = Figure(figsize=(7, 5))
    axes = figure.add_subplot()
    for name, curve, ap in zip(class_names, voc["curves"], voc["per_class_ap"], strict=True):
        if curve.num_gt:
            axes.plot(curve.recall, curve.precision, label=f"{name} (AP {ap:.3f})")
    axes.set(
        xlabel="recall",
        ylabel="precision",
        xlim=(0, 1),
        ylim=(0, 1.02),
        title=f"IoU 0.5, mAP {voc['map']:.3f}",
    )
    if axes.lines:
        axes.legend(fontsize="x-small", ncol=1 + len(axes.lines) // 20, loc="lower left")
    return figure
