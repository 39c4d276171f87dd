"""The two-stage family (R-CNN, SPPNet, Fast R-CNN, Faster R-CNN): RPN and RoI-head targets and
losses against torchvision's on the same samples, no NaN without objects, RPN proposals inside
the image, selective search recall on digit scenes, one jitted loss + gradient of every family
member, and the default config's smoke run through the trainer."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import models, tasks
from cnnjax.data.digits import load_digits
from cnnjax.data.proposals import selective_search
from cnnjax.data.scenes import generate_split
from cnnjax.data.sources import DataInfo, FeatureInfo
from cnnjax.engine import trainer
from cnnjax.errors import ConfigError
from cnnjax.losses import two_stage as L
from cnnjax.ops import boxes as box_ops
from tests.conftest import load_config

torch = pytest.importorskip("torch")
tv_rpn = pytest.importorskip("torchvision.models.detection.rpn")
tv_roi = pytest.importorskip("torchvision.models.detection.roi_heads")

K = 3  # object classes
GT = np.array([[4, 6, 20, 14], [18, 20, 30, 31], [0, 0, 0, 0]], np.float32)  # pixels, last pads
GT_VALID = np.array([True, True, False])
GT_CLASSES = np.array([2, 0, 0])


def _xyxy(b):
    return torch.tensor(np.asarray(b)[..., [1, 0, 3, 2]].copy())


def _tv_deltas(d):
    """Our (dy, dx, dh, dw) [..., 4] -> torchvision's (dx, dy, dw, dh)."""
    return torch.tensor(np.asarray(d)[..., [1, 0, 3, 2]].copy())


def _jit(fn):
    """jit with the keyword options (sample sizes, thresholds) static."""
    return lambda *args, **kw: jax.jit(functools.partial(fn, **kw))(*args)


def _iou(a, b):
    """numpy IoU of [N, 4] and [M, 4] boxes -> [N, M]."""
    lo, hi = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), -1)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None] - inter)


def _masks(targets, n):
    pos, neg = np.zeros(n, bool), np.zeros(n, bool)
    idx = np.asarray(targets.index)
    pos[idx[np.asarray(targets.positive)]] = True
    neg[idx[np.asarray(targets.valid & ~targets.positive)]] = True
    return torch.tensor(pos), torch.tensor(neg)


def test_rpn_targets_and_loss_match_torchvision():
    anchors = box_ops.anchors((4, 4), 8, (10.0, 16.0), (1.0, 2.0))  # [64, 4], 32 px image
    t = _jit(L.rpn_targets)(anchors, jnp.asarray(GT), jnp.asarray(GT_VALID), jax.random.key(0),
                            batch_size=32, positive_fraction=0.5)  # fmt: skip
    rpn = tv_rpn.RegionProposalNetwork(None, None, 0.7, 0.3, 32, 0.5, {}, {}, 0.7)
    labels, matched = rpn.assign_targets_to_anchors([_xyxy(anchors)], [{"boxes": _xyxy(GT[:2])}])
    pos, neg = _masks(t, len(anchors))
    n_pos = int(pos.sum())
    assert n_pos == min(int((labels[0] == 1).sum()), 16) and n_pos >= 2
    assert bool((labels[0][pos] == 1).all()) and bool((labels[0][neg] == 0).all())
    assert int(pos.sum() + neg.sum()) == 32 == int(t.valid.sum())
    rng = np.random.default_rng(0)
    logits = rng.normal(size=len(anchors)).astype(np.float32)
    deltas = rng.normal(0, 0.3, (len(anchors), 4)).astype(np.float32)
    got = jax.jit(L.rpn_loss)(jnp.asarray(logits), jnp.asarray(deltas), t)
    rpn.fg_bg_sampler = lambda _: ([pos], [neg])
    targets = rpn.box_coder.encode(matched, [_xyxy(anchors)])
    obj, box = rpn.compute_loss(torch.tensor(logits), _tv_deltas(deltas), labels, targets)
    np.testing.assert_allclose(float(got["loss_rpn_obj"]), float(obj), rtol=1e-5)
    np.testing.assert_allclose(float(got["loss_rpn_box"]), float(box), rtol=1e-4, atol=1e-7)


def test_roi_targets_and_fastrcnn_loss_match_torchvision():
    rng = np.random.default_rng(1)
    # Jittered copies of the objects (some positive, some not) and random boxes.
    jitter = GT[[0, 0, 1, 1, 0, 1]] + rng.normal(0, 3, (6, 4)).astype(np.float32)
    lo = rng.uniform(0, 24, (10, 2))
    rand = np.concatenate([lo, lo + rng.uniform(3, 12, (10, 2))], 1).astype(np.float32)
    proposals = np.concatenate([jitter, rand])
    proposals = np.concatenate([np.minimum(proposals[:, :2], proposals[:, 2:]),
                                np.maximum(proposals[:, :2], proposals[:, 2:])], 1)  # fmt: skip
    valid = np.ones(len(proposals), bool)
    valid[-1] = False  # a padded proposal is never sampled
    t = _jit(L.roi_targets)(jnp.asarray(proposals), jnp.asarray(valid), jnp.asarray(GT),
                            jnp.asarray(GT_CLASSES), jnp.asarray(GT_VALID), jax.random.key(3),
                            batch_size=12, positive_fraction=0.25)  # fmt: skip
    heads = tv_roi.RoIHeads(None, None, None, 0.5, 0.5, 12, 0.25, (10.0, 10.0, 5.0, 5.0),
                            0.05, 0.5, 100)  # fmt: skip
    n = len(proposals) - 1 + 2  # torchvision: the valid proposals, then the real objects
    idx = np.asarray(t.index)
    assert not np.isin(len(proposals) - 1, idx[np.asarray(t.valid)])
    # Our candidate i (i < P - 1) is torchvision's i; our ground-truth row g is P - 1 + g.
    ours = np.where(idx >= len(proposals), idx - 1, idx)
    pos, neg = np.zeros(n, bool), np.zeros(n, bool)
    pos[ours[np.asarray(t.positive)]] = True
    neg[ours[np.asarray(t.valid & ~t.positive)]] = True
    heads.fg_bg_sampler = lambda _: ([torch.tensor(pos)], [torch.tensor(neg)])
    targets = [{"boxes": _xyxy(GT[:2]), "labels": torch.tensor(GT_CLASSES[:2] + 1)}]
    rois, _, labels, reg = heads.select_training_samples([_xyxy(proposals[:-1])], targets)
    assert 1 <= int(pos.sum()) <= 3 and int(t.valid.sum()) == 12
    order = np.argsort(ours[np.asarray(t.valid)])  # torchvision keeps index order
    sel = lambda a: np.asarray(a)[np.asarray(t.valid)][order]  # noqa: E731
    np.testing.assert_allclose(sel(t.boxes)[:, [1, 0, 3, 2]], rois[0].numpy(), atol=1e-5)
    np.testing.assert_array_equal(sel(t.label), labels[0].numpy())
    fg = labels[0].numpy() > 0  # torchvision also encodes the negatives' (unused) targets
    np.testing.assert_allclose(sel(t.deltas)[fg][:, [1, 0, 3, 2]], reg[0].numpy()[fg], atol=1e-4)
    assert (sel(t.deltas)[~fg] == 0).all()
    logits = rng.normal(size=(12, K + 1)).astype(np.float32)
    deltas = rng.normal(0, 0.5, (12, K, 4)).astype(np.float32)
    got = jax.jit(L.roi_loss)(jnp.asarray(logits), jnp.asarray(deltas), t)
    tv_deltas = np.concatenate([np.zeros((12, 1, 4), np.float32), deltas], 1)  # + background
    cls, box = tv_roi.fastrcnn_loss(
        torch.tensor(sel(logits)), _tv_deltas(sel(tv_deltas)).reshape(-1, (K + 1) * 4),
        labels, reg,
    )  # fmt: skip
    np.testing.assert_allclose(float(got["loss_cls"]), float(cls), rtol=1e-5)
    np.testing.assert_allclose(float(got["loss_box"]), float(box), rtol=1e-4, atol=1e-7)


def test_no_nan_and_no_positives_without_objects():
    anchors = box_ops.anchors((4, 4), 8, (10.0,), (1.0,))
    none = jnp.zeros(3, bool)
    t = _jit(L.rpn_targets)(anchors, jnp.asarray(GT), none, jax.random.key(0), batch_size=8)
    assert not bool(t.positive.any()) and int(t.valid.sum()) == 8
    props = jnp.concatenate([jnp.asarray(GT), jnp.zeros((2, 4))])  # zero-size boxes too
    gt, classes = jnp.asarray(GT), jnp.asarray(GT_CLASSES)
    r = _jit(L.roi_targets)(props, jnp.ones(5, bool), gt, classes, none, jax.random.key(1),
                            batch_size=8)  # fmt: skip
    assert not bool(r.positive.any()) and bool((r.label == 0).all())

    def total(logits, deltas, cls, box):
        a = L.rpn_loss(logits, deltas, t)
        b = L.roi_loss(cls, box, r)
        return sum(a.values()) + sum(b.values())

    args = (jnp.zeros(16), jnp.zeros((16, 4)), jnp.zeros((8, K + 1)), jnp.zeros((8, K, 4)))
    value, grads = jax.jit(jax.value_and_grad(total, argnums=(0, 1, 2, 3)))(*args)
    assert np.isfinite(float(value))
    assert all(bool(jnp.isfinite(g).all()) for g in grads)


def _info(size=32):
    names = tuple(str(i) for i in range(K))
    return DataInfo.synthetic(
        (size, size, 1), None, boxes=FeatureInfo((None, 4), "float32"),
        box_classes=FeatureInfo((None,), "int64", K, names),
    )  # fmt: skip


TINY = dict(backbone="lenet5", feature_stride=4, anchor_scales=(8.0, 16.0), anchor_ratios=(1.0,),
            rpn_pre_nms_top_k=(48, 32), rpn_post_nms_top_k=(12, 8), pool_size=2, warp_size=16,
            head_hidden=16, spp_levels=(1, 2))  # fmt: skip


@functools.cache
def _one_step(proposals, region_features):
    """A tiny member (LeNet-5 at 32 px, a batch of one real and one padded example): one
    jitted loss + gradient, plus (RPN) inference-time proposals of a random image in the same
    compilation -> (task, batch, value, terms, grads, proposals or None, feature hw)."""
    task = tasks.create("two_stage", _info(), image_size=32, max_boxes=2, proposals=proposals,
                        region_features=region_features, num_proposals=8, search_min_side=64,
                        rpn_batch_per_image=16, roi_batch_per_image=8)  # fmt: skip
    model = models.create("two_stage", **task.model_kwargs(), **TINY)
    image = np.zeros((32, 32, 1), np.uint8)
    image[4:18, 6:14] = 255
    record = {"image": image, "boxes": np.array([[4, 6, 18, 14]], np.float32) / 32,
              "box_classes": np.array([1]), "index": 0}  # fmt: skip
    ex = task.preprocess(record, np.random.default_rng(0))
    batch = {k: np.stack([v, v]) for k, v in ex.items()}
    batch["mask"] = np.array([1.0, 0.0], np.float32)  # a padded example counts nothing
    # Random weights of the initialised shapes: building is traced, and no init compiles.
    shapes = jax.eval_shape(lambda k: model.init(k, *task.init_inputs(), train=False),
                            jax.random.key(0))  # fmt: skip
    rng = np.random.default_rng(0)
    variables = jax.tree.map(lambda a: rng.normal(0, 0.2, a.shape).astype(a.dtype), shapes)
    random_image = rng.normal(size=(2, 32, 32, 1)).astype(np.float32)

    def loss(params):
        v = {**variables, "params": params}
        out = task.loss(model.apply, v, batch, jax.random.key(1))
        props = None
        if proposals == "rpn":
            props = model.apply(v, random_image, train=False, method="propose")
            props.pop("objectness"), props.pop("rpn_deltas")
        return out.numerator / out.denominator, (out.terms, props)

    (value, (terms, props)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(
        variables["params"]
    )
    return task, batch, value, terms, grads, props


def test_rpn_proposals_are_valid_boxes_inside_the_image():
    *_, out = _one_step("rpn", "roi_pool")
    boxes, valid, scores = (np.asarray(out[k]) for k in ("proposals", "proposal_valid",
                                                          "proposal_scores"))  # fmt: skip
    hw = out["feature"].shape[1:3]  # LeNet's unpadded convs: 5x5 at 32 px
    assert boxes.shape == (2, 8, 4) and out["anchors"].shape == (hw[0] * hw[1] * 2, 4)
    assert valid[:, 0].all() and (np.diff(valid.astype(int), axis=1) <= 0).all()  # a prefix
    b = boxes[valid]
    assert (b >= 0).all() and (b[:, [0, 2]] <= 32).all() and (b[:, [1, 3]] <= 32).all()
    assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
    assert (np.diff(scores[0][valid[0]]) <= 1e-7).all()  # by descending objectness
    iou = _iou(boxes[0][valid[0]], boxes[0][valid[0]])
    assert (iou[~np.eye(len(iou), dtype=bool)] <= 0.7 + 1e-6).all()  # NMS at 0.7


@pytest.mark.parametrize("proposals,region_features", [
    ("rpn", "roi_pool"), ("selective_search", "roi_pool"), ("selective_search", "spp"),
    ("selective_search", "warp"),
])  # fmt: skip
def test_every_family_member_trains_one_step_with_finite_loss(proposals, region_features):
    task, batch, value, terms, grads, _ = _one_step(proposals, region_features)
    if proposals == "selective_search":
        assert batch["proposal_valid"][0].sum() >= 1 and batch["proposals"].shape == (2, 8, 4)
    else:
        assert "proposals" not in batch and "proposals" not in task.features()
    want = set(L.TERMS) if proposals == "rpn" else {"loss_cls", "loss_box"}
    assert set(terms) == want and np.isfinite(float(value)) and float(value) > 0
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))
    assert float(sum(jnp.abs(g).sum() for g in jax.tree.leaves(grads["box_head"]))) > 0
    assert float(sum(jnp.abs(g).sum() for g in jax.tree.leaves(grads["body"]))) > 0
    # Only the real example counts: the denominator is 1 and the terms are its values.
    assert all(float(n) == 1.0 for _, n in terms.values())


def test_selective_search_finds_the_digits_of_scenes():
    images, labels = load_digits()
    scenes = [s for _, s in itertools.islice(generate_split("test", images, labels), 30)]
    hits = []
    for s in scenes:
        boxes, valid = selective_search(s["image"], 64, min_side=128)
        assert boxes.shape == (64, 4) and valid.shape == (64,) and valid.sum() >= 1
        assert (boxes[valid == 0] == 0).all() and (boxes >= 0).all() and (boxes <= 1).all()
        if len(s["boxes"]):
            hits.extend(_iou(s["boxes"], boxes[valid > 0]).max(1) >= 0.5)
    recall = float(np.mean(hits))  # measured 0.99 (OpenCV 5.0, 30 scenes, 64 kept)
    assert recall >= 0.9, recall
    again, _ = selective_search(scenes[3]["image"].astype(np.float32) / 255, 64, min_side=128)
    first, _ = selective_search(scenes[3]["image"], 64, min_side=128)
    np.testing.assert_array_equal(first, again)  # deterministic, float input alike
    few, few_valid = selective_search(scenes[3]["image"], 2, min_side=128)
    assert few.shape == (2, 4) and few_valid.sum() == 2


def test_config_arguments_pick_the_family_member():
    for arg, want in [(None, ("rpn", "roi_align")), ("roi_pool", ("rpn", "roi_pool")),
                      ("fast", ("selective_search", "roi_pool")),
                      ("spp", ("selective_search", "spp")),
                      ("rcnn", ("selective_search", "warp"))]:  # fmt: skip
        c = load_config("configs/faster_rcnn.py", arg)
        assert (c.task.kwargs.proposals, c.task.kwargs.region_features) == want
    voc = load_config("configs/faster_rcnn.py", "voc")
    assert voc.data.name == "voc/2007" and voc.task.kwargs.boxes_key == "objects/bbox"
    with pytest.raises(ConfigError, match="one family member"):
        load_config("configs/faster_rcnn.py", "fast,spp")
    with pytest.raises(ConfigError, match="region_features"):
        tasks.create("two_stage", _info(), image_size=32, region_features="crop")


def test_config_smoke_trains_and_evaluates(tmp_path):
    config = load_config("configs/faster_rcnn.py", "smoke")
    metrics = trainer.train_and_evaluate(config, tmp_path)
    assert metrics["num_examples"] == config.data.max_eval_examples
    assert 0 <= metrics["map50"] <= 1 and len(metrics["per_class_ap50"]) == 10
    assert (tmp_path / "samples" / f"step_{config.train.num_steps:07d}.png").exists()


@pytest.mark.parametrize("proposals", ["selective_search", "rpn"])
def test_predict_reads_what_the_pipeline_computed_for_it(proposals):
    """`cnnjax.load(run).predict` keeps only `task.input_keys` of the preprocessed images: a
    selective-search member needs its proposals there too."""
    names = tuple(str(i) for i in range(K))
    info = DataInfo.synthetic((64, 64, 1), None, boxes=FeatureInfo((None, 4), "float32"),
                              box_classes=FeatureInfo((None,), "int64", K, names))  # fmt: skip
    task = tasks.create("two_stage", info, image_size=64, proposals=proposals,
                        region_features="roi_pool", num_proposals=8)  # fmt: skip
    _, scene = next(iter(generate_split("test", *load_digits())))
    ex = task.eval_preprocess({"image": scene["image"], "index": 0})  # a notebook's input
    assert set(task.input_keys) <= set(ex)
    assert ("proposals" in task.input_keys) == (proposals == "selective_search")
