"""SSD: default boxes against torchvision's DefaultBoxGenerator and the paper's rule, matching
and hard negative mining against numpy references, the loss's edge cases, the task's
normalisation, and the config's smoke run through the engine."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import models, tasks
from cnnjax.data.sources import DataInfo
from cnnjax.errors import ConfigError
from cnnjax.losses import ssd as ssd_loss
from cnnjax.models.detection import ssd as ssd_model
from tests.conftest import load_config

# Jitted once here: run eagerly, every op of the loss would dispatch (and compile) alone.
_match = jax.jit(ssd_loss.match_default_boxes)
_mine = jax.jit(ssd_loss.mine_negatives)
_loss = jax.jit(ssd_loss.ssd_loss)

# --- default boxes ----------------------------------------------------------------------------


def test_scales_follow_the_papers_rule():
    # SSD300: s_min 0.2, s_max 0.9 over six maps -> 0.2, 0.34, ..., 0.9 (+ s_7 = 1.04)
    s = ssd_model.box_scales(6, 0.2, 0.9)
    np.testing.assert_allclose(s, [0.2, 0.34, 0.48, 0.62, 0.76, 0.9, 1.04], atol=1e-12)
    assert ssd_model.box_scales(1, 0.3, 0.5) == (0.3, 0.5)


def test_default_boxes_by_hand():
    # one 1x2 map, s_1 = 0.2, s_2 = 0.8, ratio 4: sizes 0.2, sqrt(0.16) = 0.4, (0.4 w, 0.1 h)
    b = ssd_model.default_boxes([(1, 2)], 0.2, 0.8, (4.0,))
    half = {"s": 0.1, "s'": 0.2}
    want = []
    for cx in (0.25, 0.75):
        cy = 0.5
        want += [[cy - half["s"], cx - half["s"], cy + half["s"], cx + half["s"]]]
        want += [[cy - half["s'"], cx - half["s'"], cy + half["s'"], cx + half["s'"]]]
        want += [[cy - 0.05, cx - 0.2, cy + 0.05, cx + 0.2]]  # w = 0.2 * 2, h = 0.2 / 2
        want += [[cy - 0.2, cx - 0.05, cy + 0.2, cx + 0.05]]
    np.testing.assert_allclose(b, want, atol=1e-6)
    assert b.dtype == np.float32


def test_default_boxes_match_torchvision():
    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator

    sizes, ratios = [(5, 5), (3, 4), (2, 2), (1, 1)], [[2], [2, 3], [2, 3], [2]]
    scales = ssd_model.box_scales(len(sizes), 0.15, 0.9)
    gen = DefaultBoxGenerator(ratios, scales=list(scales), clip=False)
    ref = gen._grid_default_boxes([list(s) for s in sizes], [300, 300]).numpy()  # cxcywh
    ref = np.stack([ref[:, 1] - ref[:, 3] / 2, ref[:, 0] - ref[:, 2] / 2,
                    ref[:, 1] + ref[:, 3] / 2, ref[:, 0] + ref[:, 2] / 2], -1)  # fmt: skip
    ours = ssd_model.default_boxes(sizes, 0.15, 0.9, tuple(tuple(r) for r in ratios))
    n = sum(h * w * (2 + 2 * len(r)) for (h, w), r in zip(sizes, ratios, strict=True))
    assert ours.shape == ref.shape == (n, 4)
    np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_ratios_per_map_errors():
    assert ssd_model.ratios_per_map((2, 3), 2) == ((2.0, 3.0), (2.0, 3.0))
    assert ssd_model.boxes_per_cell(((2,), (2, 3)), 2) == (4, 6)
    with pytest.raises(ConfigError, match="one per map"):
        ssd_model.ratios_per_map(((2,), (3,)), 3)
    with pytest.raises(ConfigError, match="> 0"):
        ssd_model.ratios_per_map((2, -1), 1)


def test_model_outputs_follow_the_default_boxes():
    # LeNet-5 at 64 px: stride 2 = 26x26, stride 4 = 13x13; then 3x3/2 -> 7x7, 3x3 valid -> 5x5
    ratios = ((2,), (2, 3), (2,), ())
    net = models.create("ssd", num_classes=3, backbone="lenet5", feature_strides=(2, 4),
                        extras=((32, 2, 1), (32, 1, 0)), aspect_ratios=ratios)  # fmt: skip
    x = jnp.zeros((2, 64, 64, 1))
    variables = jax.eval_shape(net.init, jax.random.key(0), x)  # shapes only: nothing compiles
    out, feats = jax.eval_shape(net.apply, variables, x)
    sizes = [feats[f"map{k}"].shape[1:3] for k in range(4)]
    assert sizes == [(26, 26), (13, 13), (7, 7), (5, 5)] and "map4" not in feats
    n = len(ssd_model.default_boxes(sizes, 0.2, 0.9, ratios))
    assert n == 26 * 26 * 4 + 13 * 13 * 6 + 7 * 7 * 4 + 5 * 5 * 2
    assert out["logits"].shape == (2, n, 4) and out["deltas"].shape == (2, n, 4)
    params = variables["params"]
    assert params["cls_head1"]["kernel"].shape == (3, 3, 16, 6 * 4)  # 6 boxes x (3 + 1)
    assert params["box_head3"]["kernel"].shape == (3, 3, 32, 2 * 4)
    assert params["extra1_conv1"]["kernel"].shape == (1, 1, 16, 16)  # 1x1 to width // 2
    assert params["extra2_conv2"]["kernel"].shape == (3, 3, 16, 32)
    assert "extra1_bn1" in variables["batch_stats"]


def test_resnet_maps_at_64px():
    net = models.create("ssd", num_classes=10)  # the digit scenes' model (configs/ssd.py)
    _, feats = jax.eval_shape(net.init_with_output, jax.random.key(0), jnp.zeros((1, 64, 64, 1)))[0]
    assert [feats[f"map{k}"].shape[1:] for k in range(5)] == [
        (16, 16, 64), (8, 8, 128), (4, 4, 256), (2, 2, 512), (1, 1, 128)]  # fmt: skip


# --- matching and mining against numpy ----------------------------------------------------------


def _np_iou(a, b):
    lo, hi = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), -1)
    area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), -1)
    union = area(a)[:, None] + area(b)[None] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0)


def _np_match(gt, valid, dboxes, thr=0.5):
    iou = _np_iou(gt, dboxes)
    iou[~valid] = -1
    out = np.where(iou.max(0) >= thr, iou.argmax(0), -1)
    for g in range(len(gt)):  # later rows win a shared best default box
        if valid[g] and iou[g].max() > 0:
            out[iou[g].argmax()] = g
    return out


def _random_boxes(rng, n, lo=0.05, hi=0.5):
    c, s = rng.uniform(0.2, 0.8, (n, 2)), rng.uniform(lo, hi, (n, 2))
    return np.concatenate([c - s / 2, c + s / 2], -1).astype(np.float32)


def test_matching_matches_a_numpy_reference():
    rng = np.random.default_rng(0)
    dboxes = ssd_model.default_boxes([(4, 4), (2, 2), (1, 1)], 0.2, 0.9, (2.0,))
    for trial in range(5):
        gt = _random_boxes(rng, 6)
        valid = np.array([1, 1, 1, 0, 1, trial % 2], bool)
        got = np.asarray(_match(gt, valid, dboxes))
        np.testing.assert_array_equal(got, _np_match(gt, valid, dboxes))
        assert not np.isin(np.flatnonzero(~valid), got).any()  # padding never matches
        best = _np_iou(gt, dboxes).argmax(1)
        alone = [g for g in np.flatnonzero(valid) if (best[valid] == best[g]).sum() == 1]
        assert all(g in got for g in alone)  # an object with its own best box gets it


def test_matching_forces_a_best_box_below_the_threshold_but_not_for_empty_boxes():
    dboxes = ssd_model.default_boxes([(2, 2)], 0.5, 0.5, ())
    gt = np.array([[0.1, 0.1, 0.2, 0.2], [0.7, 0.7, 0.7, 0.9]], np.float32)  # small; zero-height
    got = np.asarray(_match(gt, np.array([True, True]), dboxes))
    assert np.flatnonzero(got == 0).tolist() == [0]  # IoU 0.04 < 0.5, but its best box
    assert not (got == 1).any()


def _np_mine(loss, pos, ratio=3.0, min_neg=3):
    k = max(int(np.floor(ratio * pos.sum())), min_neg)
    cand = [i for i in np.argsort(-loss, kind="stable") if not pos[i]]
    out = np.zeros_like(pos)
    out[cand[:k]] = True
    return out


@pytest.mark.parametrize("n_pos", [0, 1, 4, 30])
def test_hard_negative_mining_matches_a_numpy_reference(n_pos):
    rng = np.random.default_rng(n_pos)
    loss = rng.exponential(size=40).astype(np.float32)
    loss[:6] = loss[6]  # ties go in index order
    pos = np.zeros(40, bool)
    pos[rng.choice(40, n_pos, replace=False)] = True
    got = np.asarray(_mine(jnp.asarray(loss), jnp.asarray(pos)))
    np.testing.assert_array_equal(got, _np_mine(loss, pos))
    assert got.sum() == min(40 - n_pos, max(3 * n_pos, 3))


# --- the loss -----------------------------------------------------------------------------------


def _np_ssd_loss(logits, deltas, dboxes, gt, cls, valid):
    row = _np_match(gt, valid, dboxes)
    pos = row >= 0
    t = np.where(pos, cls[np.maximum(row, 0)] + 1, 0)
    logp = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True))
    logp -= logits.max(1, keepdims=True)
    ce = -logp[np.arange(len(t)), t]
    neg = _np_mine(-logp[:, 0], pos)
    g, d = gt[np.maximum(row, 0)], dboxes
    gh, gw, dh, dw = g[:, 2] - g[:, 0], g[:, 3] - g[:, 1], d[:, 2] - d[:, 0], d[:, 3] - d[:, 1]
    target = np.stack([10 * ((g[:, 0] + g[:, 2]) - (d[:, 0] + d[:, 2])) / 2 / dh,
                       10 * ((g[:, 1] + g[:, 3]) - (d[:, 1] + d[:, 3])) / 2 / dw,
                       5 * np.log(np.maximum(gh, 1e-30) / dh),
                       5 * np.log(np.maximum(gw, 1e-30) / dw)], -1)  # fmt: skip
    x = np.abs(deltas - target)
    sl1 = np.where(x < 1, 0.5 * x**2, x - 0.5).sum(1)
    return sl1[pos].sum(), ce[pos | neg].sum(), pos.sum()


def test_loss_matches_a_numpy_reference():
    rng = np.random.default_rng(1)
    dboxes = ssd_model.default_boxes([(4, 4), (2, 2)], 0.2, 0.6, (2.0,))
    a = len(dboxes)
    logits = rng.normal(size=(a, 4)).astype(np.float32) * 2
    deltas = rng.normal(size=(a, 4)).astype(np.float32)
    gt, cls, valid = _random_boxes(rng, 3), np.array([0, 2, 1]), np.array([1, 1, 0], bool)
    got = _loss(logits, deltas, dboxes, gt, cls, valid)
    box, ce, n = _np_ssd_loss(logits, deltas, dboxes, gt, cls, valid)
    np.testing.assert_allclose(float(got["loss_box"]), box, rtol=1e-4)
    np.testing.assert_allclose(float(got["loss_cls"]), ce, rtol=1e-4)
    assert got["positives"] == n > 0 and got["negatives"] == 3 * n


def test_exact_deltas_cost_no_box_loss():
    dboxes = ssd_model.default_boxes([(4, 4)], 0.3, 0.3, (2.0,))
    gt = np.array([[0.1, 0.2, 0.45, 0.4]], np.float32)
    row = np.asarray(_match(gt, np.array([True]), dboxes))
    from cnnjax.ops import boxes as box_ops

    deltas = box_ops.encode(jnp.asarray(gt)[np.maximum(row, 0)], dboxes, (10, 10, 5, 5))
    out = _loss(jnp.zeros((len(dboxes), 3)), deltas, dboxes, gt, np.array([1]),
                            np.array([True]))  # fmt: skip
    assert float(out["loss_box"]) < 1e-8 and out["positives"] >= 1
    decoded, scores = ssd_loss.decode(jnp.zeros((len(dboxes), 3)), deltas, dboxes)
    np.testing.assert_allclose(np.asarray(decoded)[row >= 0], np.repeat(gt, (row >= 0).sum(), 0),
                               atol=1e-6)  # fmt: skip
    np.testing.assert_allclose(scores, 1 / 3, atol=1e-6)


@pytest.mark.parametrize("case", ["empty", "zero_size", "random"])
def test_loss_and_gradient_are_finite(case):
    rng = np.random.default_rng(2)
    dboxes = ssd_model.default_boxes([(4, 4), (2, 2), (1, 1)], 0.2, 0.9, (2.0, 3.0))
    a = len(dboxes)
    gt, valid = np.zeros((4, 4), np.float32), np.zeros(4, bool)
    if case == "zero_size":
        gt[:2], valid[:2] = [[0.3, 0.3, 0.3, 0.6], [0.5, 0.5, 0.5, 0.5]], True
    if case == "random":
        gt, valid = _random_boxes(rng, 4), np.array([1, 1, 1, 0], bool)
    scale = 30.0 if case == "random" else 1.0
    logits = jnp.asarray(rng.normal(size=(a, 11)) * scale, jnp.float32)
    deltas = jnp.asarray(rng.normal(size=(a, 4)) * scale, jnp.float32)

    def total(lg, dl):
        out = ssd_loss.ssd_loss(lg, dl, dboxes, gt, np.array([1, 2, 3, 4]), valid)
        return out["loss_box"] + out["loss_cls"], out

    grad_fn = jax.jit(jax.value_and_grad(total, argnums=(0, 1), has_aux=True))
    (value, out), grads = grad_fn(logits, deltas)
    assert np.isfinite(float(value)) and all(np.isfinite(g).all() for g in grads)
    if case != "random":  # no positives: only the min_negatives hardest backgrounds count
        assert out["positives"] == 0 and out["negatives"] == 3 and out["loss_box"] == 0
        assert float(value) > 0 and np.abs(grads[1]).max() == 0


# --- the task -----------------------------------------------------------------------------------


def _task(**kw):
    info = DataInfo.synthetic((64, 64, 1), 10)
    return tasks.create("ssd", info, image_size=64, num_classes=3, max_boxes=2, **kw)


def test_task_options_are_checked():
    assert tasks.options("ssd")["neg_pos_ratio"] == 3.0
    assert _task(aspect_ratios=[[2], [2, 3]]).aspect_ratios == ((2,), (2, 3))
    for bad in ({"s_min": 0.5, "s_max": 0.2}, {"aspect_ratios": (2, 0)}, {"neg_pos_ratio": -1},
                {"iou_threshold": 0.0}):  # fmt: skip
        with pytest.raises(ConfigError, match="task.kwargs"):
            _task(**bad)


def _stub_apply(variables, image, train=False, mutable=None, rngs=None):
    """A stand-in SSD model: its outputs are its 'variables', on one 4x4 map."""
    res = (dict(variables), {"map0": jnp.zeros((image.shape[0], 4, 4, 8))})
    return (res, {}) if mutable else res


def test_task_loss_is_normalised_by_the_batchs_positives():
    task = _task(aspect_ratios=(2.0,))  # 4 x 4 cells x 4 boxes = 64 default boxes
    rng = np.random.default_rng(3)
    outputs = {"logits": jnp.asarray(rng.normal(size=(3, 64, 4)), jnp.float32),
               "deltas": jnp.asarray(rng.normal(size=(3, 64, 4)), jnp.float32)}  # fmt: skip
    boxes = np.zeros((3, 2, 4), np.float32)
    boxes[0, 0] = [0.1, 0.1, 0.5, 0.4]
    boxes[2, 0] = [0.5, 0.5, 0.9, 0.9]  # in a padded example: must not count
    batch = {"image": np.zeros((3, 64, 64, 1), np.float32), "boxes": boxes,
             "box_classes": np.ones((3, 2), np.int32),
             "box_valid": np.array([[1, 0], [0, 0], [1, 0]], np.float32),
             "mask": np.array([1, 1, 0], np.float32)}  # fmt: skip
    loss_fn = jax.jit(lambda v, b: task.loss(_stub_apply, v, b, jax.random.key(1)))
    loss = loss_fn(outputs, batch)
    dboxes = ssd_model.default_boxes([(4, 4)], task.s_min, task.s_max, (2.0,))
    per = [_loss(outputs["logits"][i], outputs["deltas"][i], dboxes, boxes[i],
                 batch["box_classes"][i], batch["box_valid"][i] > 0) for i in (0, 1)]  # fmt: skip
    n_pos = float(per[0]["positives"])
    assert n_pos >= 1 and float(loss.denominator) == n_pos and per[1]["positives"] == 0
    want = sum(float(p["loss_box"] + p["loss_cls"]) for p in per)
    np.testing.assert_allclose(float(loss.numerator), want, rtol=1e-5)
    np.testing.assert_allclose(float(loss.numerator), float(loss.terms["loss_box"][0] +
                               loss.terms["loss_cls"][0]), rtol=1e-6)  # fmt: skip
    assert float(loss.terms["negatives"][0]) == 3 * n_pos + 3  # image 1 is empty: 3
    empty = loss_fn(outputs, {**batch, "box_valid": np.zeros((3, 2), np.float32)})
    assert float(empty.denominator) == 1.0 and np.isfinite(float(empty.numerator))
    det = jax.jit(lambda v, b: task.detect(_stub_apply, v, b))(outputs, batch)
    assert det["boxes"].shape == (3, task.max_detections, 4) and det["valid"].any()


def test_task_rejects_a_model_with_other_ratios():
    task = _task(aspect_ratios=(2.0,))
    net = models.create("ssd", num_classes=3, backbone="lenet5", feature_strides=(4,),
                        extras=(), aspect_ratios=(2.0, 3.0))  # fmt: skip
    x = jnp.zeros((1, 64, 64, 1))
    variables = jax.eval_shape(net.init, jax.random.key(0), x)
    with pytest.raises(ConfigError, match="aspect_ratios"):
        jax.eval_shape(lambda v: task.detect(net.apply, v, {"image": x}), variables)


# --- the config -----------------------------------------------------------------------------------


def test_voc_config_builds_ssd300s_8732_default_boxes():
    c = load_config("configs/ssd.py", "voc")
    assert c.data.name == "voc/2007" and c.data.image_size == 300 and c.data.aug.flip
    assert c.task.kwargs.max_boxes == 56 and c.task.kwargs.too_many == "drop"
    ratios = c.task.kwargs.aspect_ratios
    net = models.create("ssd", num_classes=20, aspect_ratios=ratios, **c.model.kwargs.to_dict())
    x = jnp.zeros((1, 300, 300, 3))
    (out, feats), _ = jax.eval_shape(net.init_with_output, jax.random.key(0), x)
    sizes = [feats[f"map{k}"].shape[1:3] for k in range(6)]
    assert [h for h, _ in sizes] == [38, 19, 10, 5, 3, 1]  # SSD300's maps
    assert len(ssd_model.default_boxes(sizes, 0.2, 0.9, ratios)) == 8732  # the paper's count
    assert out["logits"].shape == (1, 8732, 21)


def test_smoke_config_trains_and_evaluates(tmp_path):
    from cnnjax.engine import trainer

    config = load_config("configs/ssd.py", "smoke")
    assert config.task.name == "ssd" and config.data.name == "digits_scenes"
    metrics = trainer.train_and_evaluate(config, tmp_path)
    assert 0 <= metrics["map50"] <= 1 and 0 <= metrics["coco_ap"] <= 1
    assert (tmp_path / "samples" / f"step_{config.train.num_steps:07d}.png").exists()
