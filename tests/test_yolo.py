"""YOLO v1: the loss against a loop-by-loop numpy transcription of the paper's eq. 3, hand
cases, no NaN at zero size, decoding, the model's output shape and the config's smoke run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import models
from cnnjax.engine import trainer
from cnnjax.errors import ConfigError
from cnnjax.losses import yolo as Y
from tests.conftest import load_config

S, B, C = 4, 2, 3


def _iou(a, b):
    ih = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
    iw = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    inter = ih * iw
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def reference_loss(out, boxes, classes, valid, lc=5.0, ln=0.5):
    """The paper's eq. 3, one cell and one predictor at a time (float64)."""
    out = np.asarray(out, np.float64)
    s = out.shape[0]
    owner = {}  # cell -> gt index (the largest centre in the cell)
    for g in range(len(boxes)):
        if not valid[g]:
            continue
        y1, x1, y2, x2 = boxes[g]
        i = min(max(int(np.floor((y1 + y2) / 2 * s)), 0), s - 1)
        j = min(max(int(np.floor((x1 + x2) / 2 * s)), 0), s - 1)
        area = (y2 - y1) * (x2 - x1)
        if (i, j) not in owner or area > owner[(i, j)][1]:
            owner[(i, j)] = (g, area)
    terms = dict.fromkeys(Y.TERMS, 0.0)
    for i in range(s):
        for j in range(s):
            cell = out[i, j]
            preds = []
            for b in range(B):
                x, y, sw, sh, conf = cell[5 * b : 5 * b + 5]
                cy, cx, h, w = (i + y) / s, (j + x) / s, sh**2, sw**2
                preds.append(((cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2), x, y, sw, sh, conf))
            if (i, j) not in owner:
                for p in preds:
                    terms["loss_noobj"] += ln * p[5] ** 2
                continue
            g = owner[(i, j)][0]
            gt = boxes[g]
            ious = [_iou(p[0], gt) for p in preds]
            r = int(np.argmax(ious))
            tx = (gt[1] + gt[3]) / 2 * s - j
            ty = (gt[0] + gt[2]) / 2 * s - i
            for b, p in enumerate(preds):
                if b != r:
                    terms["loss_noobj"] += ln * p[5] ** 2
                    continue
                _, x, y, sw, sh, conf = p
                terms["loss_xy"] += lc * ((x - tx) ** 2 + (y - ty) ** 2)
                terms["loss_wh"] += lc * (
                    (sw - np.sqrt(gt[3] - gt[1])) ** 2 + (sh - np.sqrt(gt[2] - gt[0])) ** 2
                )
                terms["loss_obj"] += (conf - ious[b]) ** 2
            onehot = np.eye(C)[classes[g]]
            terms["loss_cls"] += float(np.sum((cell[5 * B :] - onehot) ** 2))
    return terms


def _loss(out, boxes, classes, valid):
    return Y.yolo_v1_loss(
        jnp.asarray(out), jnp.asarray(boxes), jnp.asarray(classes), jnp.asarray(valid),
        boxes_per_cell=B, num_classes=C,
    )  # fmt: skip


@pytest.mark.parametrize("seed", range(4))
def test_loss_equals_a_loop_by_loop_transcription_of_the_paper(seed):
    rng = np.random.default_rng(seed)
    out = rng.normal(0.4, 0.3, (S, S, B * 5 + C)).astype(np.float32)
    lo = rng.uniform(0, 0.7, (5, 2))
    boxes = np.concatenate([lo, lo + rng.uniform(0.02, 0.3, (5, 2))], 1).astype(np.float32)
    boxes[3] = boxes[2] + np.float32(0.01)  # two centres in one cell: the larger one owns it
    classes = rng.integers(0, C, 5)
    valid = np.array([True, True, True, True, seed % 2 == 0])
    got = _loss(out, boxes, classes, valid)
    want = reference_loss(out, boxes, classes, valid)
    for k in Y.TERMS:
        np.testing.assert_allclose(float(got[k]), want[k], rtol=2e-5, atol=1e-5, err_msg=k)


def test_a_perfect_prediction_costs_only_the_other_predictors_confidence():
    box = np.array([0.30, 0.55, 0.50, 0.70], np.float32)  # centre (0.4, 0.625): cell (1, 2)
    out = np.zeros((S, S, B * 5 + C), np.float32)
    x, y = 0.625 * S - 2, 0.4 * S - 1
    out[1, 2, 5:10] = [x, y, np.sqrt(0.15), np.sqrt(0.2), 1.0]  # predictor 1 exact, conf 1
    out[1, 2, 4] = 0.2  # predictor 0: a zero-size box with confidence 0.2
    out[1, 2, 10 + 2] = 1.0  # class 2
    out[3, 3, 4] = 0.4  # an empty cell's confidence
    got = {k: float(v) for k, v in _loss(out, box[None], np.array([2]), np.array([True])).items()}
    assert got["loss_xy"] == pytest.approx(0, abs=1e-10)
    assert got["loss_wh"] == pytest.approx(0, abs=1e-10)
    assert got["loss_obj"] == pytest.approx(0, abs=1e-10)
    assert got["loss_cls"] == pytest.approx(0, abs=1e-10)
    assert got["loss_noobj"] == pytest.approx(0.5 * (0.2**2 + 0.4**2), rel=1e-6)


def test_no_nan_at_zero_size_and_for_empty_images():
    out = np.zeros((S, S, B * 5 + C), np.float32)  # every predicted box has zero size
    boxes = np.array([[0.5, 0.5, 0.5, 0.5], [0.1, 0.1, 0.1, 0.3]], np.float32)  # zero h / w
    total = lambda o, v: sum(_loss(o, boxes, np.array([0, 1]), v).values())
    for valid in ([True, True], [False, False]):
        v = np.array(valid)
        assert np.isfinite(float(total(out, v)))
        grad = jax.grad(lambda o, v=v: total(o, v))(jnp.asarray(out))
        assert bool(jnp.isfinite(grad).all())


def test_decode_places_each_predictor_in_its_cell_with_class_specific_scores():
    out = np.zeros((S, S, B * 5 + C), np.float32)
    out[2, 1, 0:5] = [0.5, 0.25, 0.5, np.sqrt(0.1), 0.8]  # centre (2.25/4, 1.5/4)
    out[2, 1, 10:] = [0.1, 0.7, 0.2]
    boxes, scores = Y.decode(jnp.asarray(out), B, C)
    assert boxes.shape == (S * S * B, 4) and scores.shape == (S * S * B, C)
    k = (2 * S + 1) * B  # row-major cells, then predictors
    np.testing.assert_allclose(boxes[k], [0.5625 - 0.05, 0.375 - 0.125, 0.5625 + 0.05, 0.5],
                               atol=1e-6)  # fmt: skip
    np.testing.assert_allclose(scores[k], [0.08, 0.56, 0.16], atol=1e-6)
    assert float(jnp.abs(scores).sum()) == pytest.approx(float(jnp.abs(scores[k]).sum()))


def test_model_output_is_the_grid():
    model = models.create("yolo_v1", num_classes=C, grid=S, backbone="resnet18",
                          feature_stride=16, head_width=16, hidden=32)  # fmt: skip
    x = jnp.zeros((2, 64, 64, 1))
    variables = model.init(jax.random.key(0), x)
    out, feats = model.apply(variables, x)
    assert out.shape == (2, S, S, B * 5 + C) and feats["head"].shape == (2, 2, 2, 16)


def test_conv_head_predicts_each_cell_of_a_grid_sized_map_from_a_cut_backbone():
    kw = dict(num_classes=C, grid=8, backbone="resnet18", feature_stride=8, head="conv",
              head_width=16, backbone_kwargs=(("stage_sizes", (2, 2)),))  # fmt: skip
    x = jnp.zeros((2, 64, 64, 1))
    variables = jax.eval_shape(models.create("yolo_v1", **kw).init, jax.random.key(0), x)
    assert sorted(variables["params"]["backbone"]) == [
        "bn1", "conv1", "layer1_0", "layer1_1", "layer2_0", "layer2_1"
    ]  # fmt: skip
    assert "predict" in variables["params"] and "fc1" not in variables["params"]
    out, _ = jax.eval_shape(models.create("yolo_v1", **kw).apply, variables, x)
    assert out.shape == (2, 8, 8, B * 5 + C)
    with pytest.raises(ConfigError, match="conv head needs a 7x7 map .* stride 8 is 8x8"):
        jax.eval_shape(models.create("yolo_v1", **{**kw, "grid": 7}).init, jax.random.key(0), x)
    with pytest.raises(ConfigError, match="head must be one of"):
        jax.eval_shape(models.create("yolo_v1", **{**kw, "head": "dense"}).init,
                       jax.random.key(0), x)  # fmt: skip


def test_config_smoke_trains_and_evaluates(tmp_path):
    config = load_config("configs/yolo_v1.py", "smoke")
    metrics = trainer.train_and_evaluate(config, tmp_path)
    assert metrics["num_examples"] == config.data.max_eval_examples
    assert 0 <= metrics["map50"] <= 1 and len(metrics["per_class_ap50"]) == 10
    samples = tmp_path / "samples"
    assert (samples / f"step_{config.train.num_steps:07d}.png").exists()
    assert (samples / f"step_{config.train.num_steps:07d}_pr_curves.png").exists()
