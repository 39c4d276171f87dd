"""Detection metrics: VOC AP against a loop-by-loop transcription of the devkit's VOCevaldet
and hand-computed cases, COCO numbers against raw pycocotools and faster_coco_eval, and the
accumulator against direct calls."""

import contextlib
import copy
import io
import math

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cnnjax.metrics.detection import (
    COCO_KEYS,
    DetectionMetrics,
    coco_evaluate,
    iou_matrix,
    precision_recall_at,
    precision_recall_curve,
    to_coco,
    voc_ap,
    voc_evaluate,
)

# ----------------------------------------------------------------------------- reference


def reference_voc(gt, dets, cls, thr=0.5, use_07=False):
    """VOCevaldet.m, transcribed loop for loop (no +1: continuous coordinates; 11-point
    thresholds exactly k/10) -> (ap or nan, tp list, fp list, sorted scores)."""
    npos, recs = 0, []
    for img in gt:
        sel = [j for j, c in enumerate(img["classes"]) if c == cls]
        difficult = img.get("difficult", [False] * len(img["classes"]))
        recs.append(
            {
                "BB": [list(img["boxes"][j]) for j in sel],
                "diff": [bool(difficult[j]) for j in sel],
                "det": [False] * len(sel),
            }
        )
        npos += sum(not bool(difficult[j]) for j in sel)
    ids, conf, bbs = [], [], []
    for i, img in enumerate(dets):
        for j, c in enumerate(img["classes"]):
            if c == cls:
                ids.append(i)
                conf.append(float(img["scores"][j]))
                bbs.append(list(img["boxes"][j]))
    order = sorted(range(len(conf)), key=lambda k: -conf[k])  # Python's sort is stable
    tp, fp = [0] * len(order), [0] * len(order)
    for d, k in enumerate(order):
        rec, bb = recs[ids[k]], bbs[k]
        ovmax, jmax = -math.inf, -1
        for j, g in enumerate(rec["BB"]):
            ih = min(bb[2], g[2]) - max(bb[0], g[0])
            iw = min(bb[3], g[3]) - max(bb[1], g[1])
            if iw > 0 and ih > 0:
                inter = ih * iw
                ua = (bb[2] - bb[0]) * (bb[3] - bb[1]) + (g[2] - g[0]) * (g[3] - g[1]) - inter
                ov = inter / ua
                if ov > ovmax:
                    ovmax, jmax = ov, j
        if ovmax >= thr:
            if not rec["diff"][jmax]:
                if not rec["det"][jmax]:
                    tp[d] = 1
                    rec["det"][jmax] = True
                else:
                    fp[d] = 1
        else:
            fp[d] = 1
    scores = [conf[k] for k in order]
    if npos == 0:
        return float("nan"), tp, fp, scores
    ctp, cfp, rec, prec = 0, 0, [], []
    for a, b in zip(tp, fp, strict=True):
        ctp, cfp = ctp + a, cfp + b
        rec.append(ctp / npos)
        prec.append(ctp / max(ctp + cfp, np.finfo(np.float64).eps))
    if use_07:
        ap = 0.0
        for t in [k / 10 for k in range(11)]:
            p = max([prec[i] for i in range(len(rec)) if rec[i] >= t], default=0.0)
            ap += p / 11
        return ap, tp, fp, scores
    mrec, mpre = [0.0, *rec, 1.0], [0.0, *prec, 0.0]
    for i in range(len(mpre) - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    ap = sum(
        (mrec[i] - mrec[i - 1]) * mpre[i] for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1]
    )
    return ap, tp, fp, scores


def random_case(rng, num_images=6, num_classes=4, difficult=True, grid=16):
    """Per-image lists on an integer grid (exact IoU ties, IoU == 0.5 cases) with tied scores,
    images without gt or detections, class 3 rare, some difficult boxes; a small `grid` crowds
    the boxes (a detection's best box often already taken while another still overlaps)."""
    gt, dets = [], []
    for _ in range(num_images):
        g = rng.integers(0, 5)
        yx = rng.integers(0, grid, (g, 2))
        hw = rng.integers(1, 8, (g, 2))
        boxes = np.concatenate([yx, yx + hw], 1).astype(float)
        classes = rng.choice(num_classes, g, p=[0.4, 0.35, 0.2, 0.05])
        entry = {"boxes": boxes, "classes": classes}
        if difficult:
            entry["difficult"] = rng.random(g) < 0.2
        gt.append(entry)
        jitter = boxes[rng.integers(0, max(g, 1), rng.integers(0, 6))] if g else np.zeros((0, 4))
        jitter = jitter + rng.integers(-2, 3, jitter.shape)
        jitter[:, 2:] = np.maximum(jitter[:, 2:], jitter[:, :2])
        extra = rng.integers(0, 20, (rng.integers(0, 3), 2))
        extra = np.concatenate([extra, extra + rng.integers(0, 6, extra.shape)], 1)
        det_boxes = np.concatenate([jitter, extra]).astype(float)
        n = len(det_boxes)
        det_classes = np.where(rng.random(n) < 0.8, 0, rng.integers(0, num_classes, n))
        if g:
            src = rng.integers(0, g, n)
            det_classes = np.where(rng.random(n) < 0.8, classes[src], det_classes)
        dets.append(
            {
                "boxes": det_boxes,
                "scores": rng.integers(1, 6, n) / 5,
                "classes": det_classes.astype(int),
            }
        )
    return gt, dets


def quiet_stats(evaluator):
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return np.asarray(evaluator.stats, np.float64)


def raw_pycocotools(gt: dict, dets: list) -> np.ndarray:
    """COCOeval(...).stats on copies, as anyone would call it (no renumbering)."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes(copy.deepcopy(dets)), "bbox")
    return quiet_stats(evaluator)


def faster_coco(gt: dict, dets: list) -> np.ndarray:
    from faster_coco_eval import COCO as FasterCOCO
    from faster_coco_eval import COCOeval_faster

    with contextlib.redirect_stdout(io.StringIO()):
        coco = FasterCOCO(copy.deepcopy(gt))
        results = coco.loadRes(copy.deepcopy(dets))
        evaluator = COCOeval_faster(coco, results, "bbox", print_function=lambda *a, **k: None)
    return quiet_stats(evaluator)


def stats(result: dict) -> np.ndarray:
    return np.array([result[k] for k in COCO_KEYS])


# ----------------------------------------------------------------------------- IoU and AP


def test_iou_matrix_hand_values_and_pycocotools():
    a = np.array([[0, 0, 10, 10], [0, 0, 0, 5]], float)  # the second has zero area
    b = np.array([[0, 0, 10, 5], [5, 5, 15, 15], [20, 20, 30, 30], [0, 0, 0, 5]], float)
    want = [[0.5, 25 / 175, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
    np.testing.assert_allclose(iou_matrix(a, b), want, rtol=1e-12)
    assert iou_matrix(a, np.zeros((0, 4))).shape == (2, 0)
    rng = np.random.default_rng(0)
    p, q = rng.uniform(0, 50, (7, 4)), rng.uniform(0, 50, (5, 4))
    p[:, 2:] += p[:, :2]
    q[:, 2:] += q[:, :2]
    xywh = lambda x: np.stack([x[:, 1], x[:, 0], x[:, 3] - x[:, 1], x[:, 2] - x[:, 0]], 1)
    peer = mask_utils.iou(xywh(p).tolist(), xywh(q).tolist(), [0] * len(q))
    np.testing.assert_allclose(iou_matrix(p, q), peer, rtol=1e-9)


def test_voc_ap_hand_computed_all_point_and_11_point():
    # TP, FP, TP on 2 gts: recall .5 .5 1, precision 1 .5 2/3.
    recall, precision = [0.5, 0.5, 1.0], [1.0, 0.5, 2 / 3]
    assert voc_ap(recall, precision) == pytest.approx(0.5 + 0.5 * 2 / 3, abs=1e-12)
    assert voc_ap(recall, precision, use_07_metric=True) == pytest.approx((6 + 5 * 2 / 3) / 11)
    # One of two gts found: all-point 0.5, 11-point 6/11 (t = 0 .. 0.5 reach recall .5).
    assert voc_ap([0.5], [1.0]) == pytest.approx(0.5)
    assert voc_ap([0.5], [1.0], use_07_metric=True) == pytest.approx(6 / 11)
    assert voc_ap([], []) == 0.0 and voc_ap([], [], use_07_metric=True) == 0.0


def test_voc07_thresholds_are_exactly_k_over_10():
    # recall exactly 3/10 reaches t = 0.3 (np.arange(0, 1.1, 0.1)[3] = 0.30000000000000004 would
    # not): points t = 0, .1, .2, .3 -> 4/11.
    assert voc_ap([3 / 10], [1.0], use_07_metric=True) == pytest.approx(4 / 11)
    assert voc_ap([6 / 20], [1.0], use_07_metric=True) == pytest.approx(4 / 11)
    assert voc_ap([7 / 10], [1.0], use_07_metric=True) == pytest.approx(8 / 11)


def test_voc_ap_rejects_bad_curves():
    with pytest.raises(ValueError, match="non-decreasing"):
        voc_ap([0.5, 0.2], [1.0, 1.0])
    with pytest.raises(ValueError, match="must be"):
        voc_ap([0.5, 1.0], [1.0])


def one_image(dets_boxes, scores, gt_boxes, difficult=None, cls=0):
    gt = {"boxes": np.array(gt_boxes, float), "classes": np.full(len(gt_boxes), cls)}
    if difficult is not None:
        gt["difficult"] = np.array(difficult)
    det = {"boxes": np.array(dets_boxes, float), "scores": np.array(scores, float)}
    det["classes"] = np.full(len(dets_boxes), cls)
    return [gt], [det]


A, B, FAR = [0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]


@pytest.mark.parametrize(
    "boxes, want, want07",
    [
        ([A, FAR, B], 0.5 + 0.5 * 2 / 3, (6 + 5 * 2 / 3) / 11),  # TP FP TP
        ([A, FAR, FAR, B], 0.75, (6 + 5 * 0.5) / 11),  # TP FP FP TP
        ([FAR, A, B], 2 / 3, 2 / 3),  # FP TP TP
        ([A, A, B], 0.5 + 0.5 * 2 / 3, (6 + 5 * 2 / 3) / 11),  # the duplicate is a FP
        ([A], 0.5, 6 / 11),  # one of two found
        ([A, B], 1.0, 1.0),
    ],
)
def test_voc_evaluate_hand_computed(boxes, want, want07):
    scores = np.linspace(0.9, 0.5, len(boxes))
    gt, dets = one_image(boxes, scores, [A, B])
    assert voc_evaluate(gt, dets, num_classes=1)["map"] == pytest.approx(want, abs=1e-12)
    out = voc_evaluate(gt, dets, num_classes=1, use_07_metric=True)
    assert out["map"] == pytest.approx(want07, abs=1e-12)


def test_devkit_matching_rules():
    gt1, gt2 = [0, 0, 10, 10], [0, 2, 10, 12]
    # The second detection's best box (IoU .85) is taken; it is not passed on to gt2 (.79 >= .5
    # and unmatched): a false positive, as in VOCevaldet (COCO would match it to gt2).
    gt, dets = one_image([gt1, [0, 0.8, 10, 10.8]], [0.9, 0.8], [gt1, gt2])
    curve = precision_recall_curve(gt, dets, 0)
    np.testing.assert_array_equal(curve.recall, [0.5, 0.5])
    np.testing.assert_array_equal(curve.precision, [1.0, 0.5])
    # IoU exactly 0.5 counts (the devkit's >=).
    gt, dets = one_image([[0, 0, 10, 5]], [0.9], [A])
    assert voc_evaluate(gt, dets, num_classes=1)["map"] == 1.0
    assert voc_evaluate(gt, dets, num_classes=1, iou_threshold=0.51)["map"] == 0.0
    # A detection whose best box is difficult is ignored; difficult boxes are not counted.
    gt, dets = one_image([A, FAR, B], [0.9, 0.8, 0.7], [A, B], difficult=[True, False])
    curve = precision_recall_curve(gt, dets, 0)
    assert curve.num_gt == 1
    np.testing.assert_array_equal(curve.scores, [0.8, 0.7])  # the one on A is dropped
    np.testing.assert_array_equal(curve.recall, [0.0, 1.0])
    assert voc_evaluate(gt, dets, num_classes=1)["map"] == pytest.approx(0.5)


def test_tied_scores_keep_list_order():
    # Equal scores: the FP listed first ranks first (AP .5); listed second, AP 1.
    gt, dets = one_image([FAR, A], [0.5, 0.5], [A])
    assert voc_evaluate(gt, dets, num_classes=1)["map"] == pytest.approx(0.5)
    gt, dets = one_image([A, FAR], [0.5, 0.5], [A])
    assert voc_evaluate(gt, dets, num_classes=1)["map"] == pytest.approx(1.0)
    # Across images: the earlier image's detection ranks first.
    gt = [{"boxes": np.zeros((0, 4)), "classes": []}, {"boxes": [A], "classes": [0]}]
    dets = [{"boxes": [A], "scores": [0.5], "classes": [0]}] * 2
    assert voc_evaluate(gt, dets, num_classes=1)["map"] == pytest.approx(0.5)


def test_classes_and_images_without_gt_or_detections():
    gt = [
        {"boxes": [A], "classes": [0]},
        {"boxes": np.zeros((0, 4)), "classes": []},  # no gt: its detections are FPs
        {"boxes": [B], "classes": [1]},  # no detections here
    ]
    dets = [
        {"boxes": [A], "scores": [0.9], "classes": [0]},
        {"boxes": [A, A], "scores": [0.95, 0.3], "classes": [0, 2]},  # class 2 has no gt
        {"boxes": np.zeros((0, 4)), "scores": [], "classes": []},
    ]
    out = voc_evaluate(gt, dets, num_classes=4)
    assert out["per_class_ap"][:2] == [0.5, 0.0]
    assert all(math.isnan(v) for v in out["per_class_ap"][2:])
    assert out["num_gt"] == [1, 1, 0, 0]
    assert out["map"] == pytest.approx(0.25)  # mean over classes 0 and 1 only
    empty = voc_evaluate([gt[1]], [dets[2]], num_classes=2)
    assert math.isnan(empty["map"]) and len(empty["curves"]) == 2


def test_voc_evaluate_matches_the_devkit_transcription_on_random_cases():
    rng = np.random.default_rng(1)
    for trial in range(30):
        gt, dets = random_case(rng, grid=16 if trial % 2 else 4)
        for use_07 in (False, True):
            for thr in (0.5, 0.3):
                out = voc_evaluate(gt, dets, num_classes=4, iou_threshold=thr, use_07_metric=use_07)
                want = [reference_voc(gt, dets, k, thr, use_07)[0] for k in range(4)]
                np.testing.assert_allclose(
                    out["per_class_ap"], want, rtol=1e-12, err_msg=f"trial {trial}"
                )


def test_precision_recall_at_matches_the_transcription():
    rng = np.random.default_rng(2)
    for _ in range(10):
        gt, dets = random_case(rng)
        for threshold in (0.0, 0.4, 0.8, 2.0):
            tp = fp = num_gt = 0
            for k in range(4):
                _, t, f, s = reference_voc(gt, dets, k)
                keep = [i for i, v in enumerate(s) if v >= threshold]
                tp, fp = tp + sum(t[i] for i in keep), fp + sum(f[i] for i in keep)
            num_gt = sum(int((~g["difficult"]).sum()) for g in gt)
            precision, recall = precision_recall_at(gt, dets, score_threshold=threshold)
            assert precision == pytest.approx(tp / (tp + fp) if tp + fp else 0.0)
            assert recall == pytest.approx(tp / num_gt if num_gt else float("nan"), nan_ok=True)


def test_bad_voc_inputs_raise_naming_the_value():
    gt, dets = one_image([A], [0.9], [A])
    with pytest.raises(
        ValueError, match=r"detections\[0\]\['boxes'\]\[0\] = \[5.0, 0.0, 1.0, 4.0\]"
    ):
        voc_evaluate(gt, one_image([[5, 0, 1, 4]], [0.9], [A])[1], num_classes=1)
    with pytest.raises(ValueError, match=r"scores'\]\[0\] = nan"):
        voc_evaluate(gt, one_image([A], [np.nan], [A])[1], num_classes=1)
    with pytest.raises(ValueError, match=r"class id 3, want \[0, 2\)"):
        voc_evaluate(gt, one_image([A], [0.9], [A], cls=3)[1], num_classes=2)
    with pytest.raises(ValueError, match=r"must be \[N, 4\]"):
        voc_evaluate([{"boxes": [[0, 1, 2]], "classes": [0]}], dets, num_classes=1)
    with pytest.raises(ValueError, match="aligned"):
        voc_evaluate(gt, dets * 2, num_classes=1)
    with pytest.raises(ValueError, match="iou_threshold"):
        voc_evaluate(gt, dets, num_classes=1, iou_threshold=0)
    negative = one_image([A], [-3.0], [A])[1]  # negative scores are fine (logits)
    assert voc_evaluate(gt, negative, num_classes=1)["map"] == 1.0


# ----------------------------------------------------------------------------- COCO


def random_coco(rng, num_images=5, num_categories=3, crowd=0.1, many=False):
    """A COCO gt dict (ids from 1; some crowd boxes, an image without gt, a category without
    gt) and results with tied scores; `many`: > 100 detections in one image and category."""
    images = [{"id": i + 1, "height": 200, "width": 300} for i in range(num_images)]
    categories = [{"id": c + 1, "name": f"c{c}"} for c in range(num_categories + 1)]
    annotations, dets = [], []
    for image in images[:-1]:
        for _ in range(rng.integers(1, 6)):
            x, y = rng.uniform(0, 200, 2)
            w, h = rng.uniform(2, 120, 2)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image["id"],
                    "category_id": int(rng.integers(1, num_categories + 1)),
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": int(rng.random() < crowd),
                }
            )
    for ann in annotations:
        for _ in range(rng.integers(0, 3)):
            x, y, w, h = np.asarray(ann["bbox"]) * rng.uniform(0.8, 1.2, 4)
            dets.append(
                {
                    "image_id": ann["image_id"],
                    "category_id": ann["category_id"],
                    "bbox": [x, y, w, h],
                    "score": float(rng.integers(1, 10) / 10),
                }
            )
    for _ in range(8):  # false positives, including on the image without gt
        x, y = rng.uniform(0, 250, 2)
        dets.append(
            {
                "image_id": int(rng.integers(1, num_images + 1)),
                "category_id": int(rng.integers(1, num_categories + 1)),
                "bbox": [x, y, *rng.uniform(2, 60, 2)],
                "score": float(rng.integers(1, 10) / 10),
            }
        )
    if many:
        ann = annotations[0]
        for _ in range(130):
            x, y, w, h = np.asarray(ann["bbox"]) * rng.uniform(0.7, 1.3, 4)
            dets.append({**dets[0], "image_id": ann["image_id"], "bbox": [x, y, w, h]})
            dets[-1].update(category_id=ann["category_id"], score=float(rng.integers(1, 4) / 4))
    return {"images": images, "annotations": annotations, "categories": categories}, dets


@pytest.mark.parametrize("seed, crowd, many", [(0, 0.0, False), (1, 0.3, False), (2, 0.1, True)])
def test_coco_evaluate_equals_pycocotools_and_does_not_mutate(seed, crowd, many):
    gt, dets = random_coco(np.random.default_rng(seed), crowd=crowd, many=many)
    gt_copy, dets_copy = copy.deepcopy(gt), copy.deepcopy(dets)
    out = coco_evaluate(gt, dets)
    assert list(out) == list(COCO_KEYS)
    np.testing.assert_allclose(stats(out), raw_pycocotools(gt, dets), atol=1e-6)
    assert gt == gt_copy and dets == dets_copy
    assert 0 < out["AP"] < 1


def test_coco_evaluate_agrees_with_faster_coco_eval():
    gt, dets = random_coco(np.random.default_rng(3), crowd=0.1, many=True)
    np.testing.assert_allclose(stats(coco_evaluate(gt, dets)), faster_coco(gt, dets), atol=1e-6)


def test_annotation_id_zero_is_renumbered():
    images = [{"id": 1}, {"id": 2}]
    categories = [{"id": 1, "name": "a"}]
    annotations = [
        {
            "id": i,
            "image_id": 1 + i % 2,
            "category_id": 1,
            "bbox": [10 * i, 0, 20, 20],
            "area": 400.0,
            "iscrowd": 0,
        }
        for i in range(3)
    ]
    gt = {"images": images, "annotations": annotations, "categories": categories}
    dets = [
        {"image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"], "score": 0.9}
        for a in annotations
    ]
    renumbered = {**gt, "annotations": [{**a, "id": a["id"] + 1} for a in annotations]}
    raw = raw_pycocotools(gt, dets)
    want = raw_pycocotools(renumbered, dets)
    assert want[0] == pytest.approx(1.0)
    assert raw[0] < 0.9  # pycocotools counts the perfect match to id 0 as a false positive
    np.testing.assert_allclose(stats(coco_evaluate(gt, dets)), want, atol=1e-12)


def test_coco_evaluate_without_detections():
    gt, dets = random_coco(np.random.default_rng(4))
    out = coco_evaluate(gt, [])
    # No detections evaluate like one false positive far away: AP and AR 0 where there is gt.
    far = [
        {
            "image_id": 1,
            "category_id": gt["annotations"][0]["category_id"],
            "bbox": [5000.0, 5000.0, 3.0, 3.0],
            "score": 0.5,
        }
    ]
    np.testing.assert_allclose(stats(out), raw_pycocotools(gt, far), atol=1e-12)
    assert out["AP"] == 0.0 and out["AR100"] == 0.0
    np.testing.assert_allclose(stats(out), faster_coco(gt, []), atol=1e-12)  # it takes []
    no_gt = {**gt, "annotations": []}
    assert set(coco_evaluate(no_gt, []).values()) == {-1.0}
    assert set(coco_evaluate(no_gt, dets).values()) == {-1.0}


def test_bad_coco_inputs_raise():
    gt, dets = random_coco(np.random.default_rng(5))
    with pytest.raises(ValueError, match="image_id 99, not in images"):
        coco_evaluate(gt, [{**dets[0], "image_id": 99}])
    with pytest.raises(ValueError, match="category_id 42, not in categories"):
        coco_evaluate(gt, [{**dets[0], "category_id": 42}])
    with pytest.raises(ValueError, match="score nan"):
        coco_evaluate(gt, [{**dets[0], "score": float("nan")}])
    with pytest.raises(ValueError, match=r"lacks \['iscrowd'\]"):
        bad = {k: v for k, v in gt["annotations"][0].items() if k != "iscrowd"}
        coco_evaluate({**gt, "annotations": [bad]}, dets)


def test_to_coco_conversion():
    gt = [{"boxes": [[1, 2, 11, 7]], "classes": [1]}, {"boxes": np.zeros((0, 4)), "classes": []}]
    dets = [
        {"boxes": np.zeros((0, 4)), "scores": [], "classes": []},
        {"boxes": [[0, 0, 4, 8]], "scores": [0.7], "classes": [0]},
    ]
    gt_dict, results = to_coco(gt, dets, class_names=["a", "b"], image_hw=(20, 30))
    assert gt_dict["images"] == [
        {"id": 1, "height": 20, "width": 30},
        {"id": 2, **{"height": 20, "width": 30}},
    ]
    assert gt_dict["categories"] == [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    assert gt_dict["annotations"] == [
        {
            "id": 1,
            "image_id": 1,
            "category_id": 2,
            "bbox": [2.0, 1.0, 5.0, 10.0],
            "area": 50.0,
            "iscrowd": 0,
        }
    ]
    assert results == [
        {"image_id": 2, "category_id": 1, "bbox": [0.0, 0.0, 8.0, 4.0], "score": 0.7}
    ]
    with pytest.raises(ValueError, match="difficult"):
        to_coco([{**gt[0], "difficult": [True]}], dets[:1], class_names=["a", "b"])
    with pytest.raises(ValueError, match=r"class id 1, want \[0, 1\)"):
        to_coco(gt, dets, class_names=["a"])


def test_to_coco_then_coco_evaluate_perfect_and_empty():
    rng = np.random.default_rng(6)
    gt, _ = random_case(rng, difficult=False)
    perfect = [
        {"boxes": g["boxes"], "scores": np.ones(len(g["boxes"])), "classes": g["classes"]}
        for g in gt
    ]
    out = coco_evaluate(*to_coco(gt, perfect, class_names=list("abcd")))
    assert out["AP"] == pytest.approx(1.0) and out["AR100"] == pytest.approx(1.0)


# ----------------------------------------------------------------------------- accumulator

HW = (40, 80)


def random_batch(rng, b=4, d=6, m=5, num_classes=3):
    """A batch as the task's eval outputs, padding rows and padded boxes full of garbage."""
    gt_boxes = rng.uniform(0, 0.5, (b, m, 4))
    gt_boxes[..., 2:] = gt_boxes[..., :2] + rng.uniform(0.05, 0.5, (b, m, 2))
    src = rng.integers(0, m, d)
    det_boxes = np.clip(gt_boxes[:, src] + rng.normal(0, 0.03, (b, d, 4)), 0, 1)
    det_boxes[..., 2:] = np.maximum(det_boxes[..., 2:], det_boxes[..., :2])
    gt_classes = rng.integers(0, num_classes, (b, m))
    outputs = {
        "det_boxes": det_boxes,
        "det_scores": rng.integers(1, 10, (b, d)) / 10,
        "det_classes": np.where(rng.random((b, d)) < 0.7, gt_classes[:, src], 0),
        "det_valid": (rng.random((b, d)) < 0.8).astype(np.float32),
        "gt_boxes": gt_boxes,
        "gt_classes": gt_classes,
        "gt_valid": (rng.random((b, m)) < 0.7).astype(np.float32),
        "mask": np.array([1.0] * (b - 1) + [0.0]),
    }
    for key in ("det_boxes", "gt_boxes"):  # padded boxes: inverted, NaN, out of range
        valid = outputs[key.replace("boxes", "valid")] > 0
        outputs[key][~valid] = [np.nan, 5, -1, 3]
        outputs[key][-1] = [np.nan, 5, -1, 3]  # the padded example
    outputs["det_scores"][outputs["det_valid"] == 0] = np.nan
    outputs["det_classes"][outputs["det_valid"] == 0] = -1
    outputs["gt_classes"][outputs["gt_valid"] == 0] = 99
    return outputs


def expected_images(batches):
    """Per-image lists of the real rows and valid boxes, in pixels, built with plain loops."""
    h, w = HW
    gts, dets = [], []
    for out in batches:
        for i in range(len(out["mask"])):
            if out["mask"][i] == 0:
                continue
            g = [j for j in range(out["gt_valid"].shape[1]) if out["gt_valid"][i, j] > 0]
            e = [j for j in range(out["det_valid"].shape[1]) if out["det_valid"][i, j] > 0]
            gts.append(
                {
                    "boxes": [
                        [
                            out["gt_boxes"][i, j, 0] * h,
                            out["gt_boxes"][i, j, 1] * w,
                            out["gt_boxes"][i, j, 2] * h,
                            out["gt_boxes"][i, j, 3] * w,
                        ]
                        for j in g
                    ]
                    or np.zeros((0, 4)),
                    "classes": [int(out["gt_classes"][i, j]) for j in g],
                }
            )
            dets.append(
                {
                    "boxes": [
                        [
                            out["det_boxes"][i, j, 0] * h,
                            out["det_boxes"][i, j, 1] * w,
                            out["det_boxes"][i, j, 2] * h,
                            out["det_boxes"][i, j, 3] * w,
                        ]
                        for j in e
                    ]
                    or np.zeros((0, 4)),
                    "scores": [out["det_scores"][i, j] for j in e],
                    "classes": [int(out["det_classes"][i, j]) for j in e],
                }
            )
    return gts, dets


def test_accumulator_equals_direct_calls_and_ignores_padding():
    rng = np.random.default_rng(7)
    batches = [random_batch(rng) for _ in range(3)]
    acc = DetectionMetrics(3, HW, class_names=["a", "b", "c"], score_threshold=0.45)
    for out in batches:
        acc.add(out)
    result = acc.result()
    gts, dets = expected_images(batches)
    images = acc.images()
    for got, want in zip(images[0] + images[1], gts + dets, strict=True):
        np.testing.assert_allclose(got["boxes"], np.asarray(want["boxes"]).reshape(-1, 4))
        np.testing.assert_array_equal(got["classes"], want["classes"])
    voc = voc_evaluate(gts, dets, num_classes=3)
    voc07 = voc_evaluate(gts, dets, num_classes=3, use_07_metric=True)
    coco = coco_evaluate(*to_coco(gts, dets, class_names=["a", "b", "c"]))
    precision, recall = precision_recall_at(gts, dets, score_threshold=0.45)
    assert result["num_examples"] == 9
    assert result["map50"] == pytest.approx(voc["map"], abs=1e-12)
    assert result["map50_voc07"] == pytest.approx(voc07["map"], abs=1e-12)
    np.testing.assert_allclose(result["per_class_ap50"], voc["per_class_ap"], atol=1e-12)
    for key in COCO_KEYS:
        assert result[f"coco_{key.lower()}"] == pytest.approx(coco[key], abs=1e-9), key
    assert (result["precision50"], result["recall50"]) == pytest.approx((precision, recall))
    assert 0 < result["map50"] < 1 and 0 < result["coco_ap"] < 1


def test_merged_accumulators_equal_one():
    rng = np.random.default_rng(8)
    batches = [random_batch(rng) for _ in range(4)]
    one, first, second = (DetectionMetrics(3, HW) for _ in range(3))
    for i, out in enumerate(batches):
        one.add(out)
        (first if i < 2 else second).add(out)
    first.merge(second)
    merged = DetectionMetrics(3, HW)
    merged.merge_state(first.state())
    for a, b in ((one, first), (one, merged)):
        assert a.state().keys() == b.state().keys()
        for key in a.state():
            np.testing.assert_array_equal(a.state()[key], b.state()[key])
    np.testing.assert_equal(one.result(), merged.result())
    # Shares with different padded widths still concatenate (the narrower padded as invalid).
    wide = DetectionMetrics(3, HW)
    wide.add(random_batch(np.random.default_rng(9), d=9, m=2))
    wide.merge(one)
    assert wide.result()["num_examples"] == 3 + one.result()["num_examples"]


def test_accumulator_write_files(tmp_path):
    acc = DetectionMetrics(3, HW, class_names=["cat", "dog", "bird"])
    acc.add(random_batch(np.random.default_rng(10)))
    paths = acc.write_files(tmp_path / "eval", "step_10")
    assert [p.name for p in paths] == ["step_10_per_class_ap.md", "step_10_pr_curves.png"]
    table = paths[0].read_text()
    voc = voc_evaluate(*acc.images(), num_classes=3)
    for name, n in zip(["cat", "dog", "bird"], voc["num_gt"], strict=True):
        assert f"| {name} | {n} |" in table
    assert paths[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_accumulator_rejects_bad_input_and_empty_state():
    acc = DetectionMetrics(3, HW)
    with pytest.raises(ValueError, match="no examples were evaluated"):
        acc.result()
    out = random_batch(np.random.default_rng(11))
    acc.add({**out, "mask": np.zeros(4)})
    with pytest.raises(ValueError, match="no examples were evaluated"):
        acc.result()
    valid = np.argwhere(out["det_valid"][:3] > 0)[0]
    bad = copy.deepcopy(out)
    bad["det_boxes"][tuple(valid)] = [0.5, 0.5, 0.2, 0.9]
    with pytest.raises(ValueError, match=rf"det_boxes\[{valid[0]}, {valid[1]}\] = \[0.5, 0.5"):
        acc.add(bad)
    bad = copy.deepcopy(out)
    bad["det_scores"][tuple(valid)] = np.nan
    with pytest.raises(ValueError, match="is not a finite score"):
        acc.add(bad)
    bad = copy.deepcopy(out)
    bad["det_classes"][tuple(valid)] = 3
    with pytest.raises(ValueError, match=r"det_classes.* = 3 is not a class id in \[0, 3\)"):
        acc.add(bad)
    g = tuple(np.argwhere(out["gt_valid"][:3] > 0)[0])
    bad = copy.deepcopy(out)
    bad["gt_boxes"][g] = [0, 0, 20, 30]  # pixels, not normalised
    with pytest.raises(ValueError, match="outside"):
        acc.add(bad)
    with pytest.raises(ValueError, match="gt_classes has shape"):
        acc.add({**out, "gt_classes": out["gt_classes"][:, :2]})
    with pytest.raises(ValueError, match="lack"):
        acc.add({k: v for k, v in out.items() if k != "det_valid"})
    with pytest.raises(ValueError, match="class_names"):
        DetectionMetrics(3, HW, class_names=["a"])
