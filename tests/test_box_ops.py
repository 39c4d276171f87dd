"""cnnjax.ops.boxes / nms / roi against torchvision.ops (and its detection utilities) and numpy
references, gradients included; boxes are (y1, x1, y2, x2) here and (x1, y1, x2, y2) in torch."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax.ops import boxes as B
from cnnjax.ops import nms as N
from cnnjax.ops import roi as R

torch = pytest.importorskip("torch")
tv = pytest.importorskip("torchvision.ops")
det_utils = pytest.importorskip("torchvision.models.detection._utils")
anchor_utils = pytest.importorskip("torchvision.models.detection.anchor_utils")

SWAP = [1, 0, 3, 2]  # yxyx <-> xyxy, and (dy, dx, dh, dw) <-> (dx, dy, dw, dh)


def _boxes(n, seed=0, size=32.0, integer=False):
    """[n, 4] float32 (y1, x1, y2, x2) with positive sizes inside [0, size]."""
    rng = np.random.default_rng(seed)
    lo = rng.uniform(0, size * 0.7, (n, 2))
    hi = lo + rng.uniform(1, size * 0.5, (n, 2))
    b = np.concatenate([lo, hi], axis=1)
    return (np.floor(b) if integer else b).astype(np.float32)


def _t(a):
    return torch.from_numpy(np.array(a))


# --- formats, overlaps, coder ----------------------------------------------------------------


def test_conversions_match_torchvision_and_round_trip():
    b = _boxes(7)
    xyxy = _t(b[:, SWAP])
    np.testing.assert_array_equal(B.yxyx_to_xyxy(b), xyxy.numpy())
    np.testing.assert_array_equal(B.xyxy_to_yxyx(B.yxyx_to_xyxy(b)), b)
    want = tv.box_convert(xyxy, "xyxy", "cxcywh").numpy()
    np.testing.assert_allclose(B.yxyx_to_cxcywh(b), want, rtol=1e-6)
    np.testing.assert_allclose(B.cxcywh_to_yxyx(B.yxyx_to_cxcywh(b)), b, atol=1e-5)
    px = B.to_pixels(b / 32.0, (64, 32))
    np.testing.assert_allclose(px, b * np.array([2, 1, 2, 1]), rtol=1e-6)
    np.testing.assert_allclose(B.to_normalized(px, (64, 32)), b / 32.0, rtol=1e-6)
    clipped = tv.clip_boxes_to_image(xyxy - 5, (20, 24)).numpy()[:, SWAP]
    np.testing.assert_array_equal(B.clip_to_image(b - 5, (20, 24)), clipped)


def test_iou_and_giou_match_torchvision_with_gradients():
    a, b = _boxes(6, seed=1), _boxes(5, seed=2)
    w = np.random.default_rng(3).standard_normal((6, 5)).astype(np.float32)
    for ours, theirs in ((B.iou_matrix, tv.box_iou), (B.giou_matrix, tv.generalized_box_iou)):
        ta = _t(a[:, SWAP]).requires_grad_()
        tb = _t(b[:, SWAP]).requires_grad_()
        value = theirs(ta, tb)
        (value * _t(w)).sum().backward()
        np.testing.assert_allclose(jax.jit(ours)(a, b), value.detach().numpy(), atol=1e-6)
        ga, gb = jax.grad(lambda x, y, f=ours: jnp.sum(f(x, y) * w), (0, 1))(a, b)
        np.testing.assert_allclose(ga, ta.grad.numpy()[:, SWAP], atol=1e-6)
        np.testing.assert_allclose(gb, tb.grad.numpy()[:, SWAP], atol=1e-6)


def test_overlaps_of_empty_boxes_are_zero_not_nan():
    pts = np.array([[3, 3, 3, 3], [3, 3, 3, 3], [0, 0, 0, 5]], np.float32)
    for f in (B.iou_matrix, B.giou_matrix):
        value, grad = jax.value_and_grad(lambda x, f=f: jnp.sum(f(x, x)))(pts)
        assert np.isfinite(value) and np.isfinite(grad).all()
    np.testing.assert_array_equal(B.iou_matrix(pts, pts), np.zeros((3, 3)))
    assert B.area(np.array([[5, 5, 2, 9]], np.float32))[0] == 0  # inverted: empty


def test_encode_decode_match_torchvision_box_coder():
    gt, anc = _boxes(9, seed=4), _boxes(9, seed=5)
    ours_w, torch_w = (5.0, 10.0, 1.0, 2.0), (10.0, 5.0, 2.0, 1.0)  # (wy, wx, wh, ww) / (wx, ...)
    coder = det_utils.BoxCoder(torch_w)
    want = coder.encode_single(_t(gt[:, SWAP]), _t(anc[:, SWAP])).numpy()[:, SWAP]
    deltas = B.encode(gt, anc, ours_w)
    np.testing.assert_allclose(deltas, want, rtol=1e-5, atol=1e-5)
    codes = np.random.default_rng(6).normal(0, 3, (9, 4)).astype(np.float32)  # some clip
    want = coder.decode_single(_t(codes[:, SWAP]), _t(anc[:, SWAP])).numpy()[:, SWAP]
    np.testing.assert_allclose(B.decode(codes, anc, ours_w), want, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(B.decode(deltas, anc, ours_w), gt, rtol=1e-5, atol=1e-4)
    big = B.decode(np.array([[0, 0, 50.0, 0]], np.float32), anc[:1])[0]
    np.testing.assert_allclose(big[2] - big[0], (anc[0, 2] - anc[0, 0]) * 1000 / 16, rtol=1e-5)
    padded = B.encode(np.zeros((1, 4), np.float32), anc[:1])  # a padded ground-truth row
    assert np.isfinite(padded).all()


def test_anchors_match_torchvision_generator():
    gen = anchor_utils.AnchorGenerator(sizes=((32, 64),), aspect_ratios=((0.25, 1.0, 4.0),))
    want = gen.grid_anchors([[3, 5]], [[torch.tensor(8), torch.tensor(16)]])[0].numpy()
    got = B.anchors((3, 5), (8, 16), (32, 64), (0.25, 1.0, 4.0), offset=0.0)
    assert got.shape == (3 * 5 * 6, 4)
    np.testing.assert_array_equal(got, want[:, SWAP])
    centred = B.anchors((3, 5), (8, 16), (32, 64), (0.25, 1.0, 4.0))
    np.testing.assert_allclose(centred - got, np.tile([4, 8, 4, 8], (90, 1)), atol=1e-5)
    a = B.anchors((1, 1), 16, (32,), (0.5, 2.0), offset=0.5)  # h / w = ratio, area = scale^2
    h, w = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
    np.testing.assert_allclose(h / w, [0.5, 2.0], rtol=1e-6)
    np.testing.assert_allclose(h * w, [1024, 1024], rtol=1e-5)


# --- matching and sampling -------------------------------------------------------------------


def _gt_and_anchors(seed):
    anc = B.anchors((4, 4), 8, (12, 20), (0.5, 1.0, 2.0))
    rng = np.random.default_rng(seed)
    picks = np.asarray(anc)[rng.choice(len(anc), 5, replace=False)]
    gt = picks + rng.uniform(-1.5, 1.5, picks.shape).astype(
        np.float32
    )  # each gt overlaps an anchor
    gt[-1] = [9, 9, 14, 13]  # small: its best IoU is < 0.5, a low-quality match
    return gt.astype(np.float32), np.asarray(anc)


@pytest.mark.parametrize("low_quality", [False, True])
def test_match_equals_torchvision_matcher_with_padded_rows(low_quality):
    gt, anc = _gt_and_anchors(7)
    iou = np.asarray(B.iou_matrix(gt, anc))
    for fg, bg in ((0.7, 0.3), (0.5, 0.5)):
        want = det_utils.Matcher(fg, bg, low_quality)(_t(iou)).numpy()
        padded = np.concatenate([iou, np.full((2, iou.shape[1]), 0.9, np.float32)])  # junk rows
        got = B.match(padded, np.arange(7) < 5, fg, bg, low_quality)
        np.testing.assert_array_equal(got, want)
        # padding in the middle: indices refer to the padded rows, original row = source[index]
        source = np.array([0, 1, -1, 2, 3, 4, -1])
        mid = padded[[0, 1, 5, 2, 3, 4, 6]]
        got = np.asarray(B.match(mid, source >= 0, fg, bg, low_quality))
        np.testing.assert_array_equal(np.where(got >= 0, source[got], got), want)
        assert (got >= 0).any() and (got == -1).any() and (fg == bg or (got == -2).any())
        if low_quality:  # the small box gained anchors it would not have had
            assert (got == 5).sum() > (
                np.asarray(B.match(mid, source >= 0, fg, bg, False)) == 5
            ).sum()


def test_match_without_valid_rows_or_overlaps_is_background():
    iou = np.zeros((3, 10), np.float32)
    assert (np.asarray(B.match(iou, np.zeros(3, bool), 0.7, 0.3)) == -1).all()
    iou[0, [4, 7]] = 0.2  # row 0 gets its tied best anchors; row 1 overlaps nothing: no match
    got = np.asarray(B.match(iou, np.array([True, True, False]), 0.7, 0.3, True))
    np.testing.assert_array_equal(got, [-1, -1, -1, -1, 0, -1, -1, 0, -1, -1])


def test_sample_is_balanced_random_and_stays_in_its_pools():
    m = np.full(80, -2, np.int32)
    m[:10], m[10:60] = 3, -1
    m = np.random.default_rng(8).permutation(m)
    f = jax.jit(lambda k, m: B.sample(m, k, 32, 0.25))
    for matches, n_pos, n_neg in ((m, 8, 24), (np.where(m == -1, -2, m), 8, 0)):
        idx, pos, valid = map(np.asarray, f(jax.random.key(0), matches))
        assert pos.sum() == n_pos and (valid & ~pos).sum() == n_neg
        assert (matches[idx[pos]] >= 0).all() and (matches[idx[valid & ~pos]] == -1).all()
        assert len(set(idx[valid])) == valid.sum() and (idx[~valid] == -1).all()
        assert valid[: n_pos + n_neg].all() and pos[:n_pos].all()
    keys = jax.random.split(jax.random.key(1), 2000)
    idx, pos, _ = jax.vmap(f, in_axes=(0, None))(keys, m)
    counts = np.bincount(np.asarray(idx)[np.asarray(pos)], minlength=80)[m >= 0]
    np.testing.assert_allclose(counts / 2000, 0.8, atol=0.05)  # 8 of 10 uniformly
    few = np.where(np.arange(80) < 3, 0, -1).astype(np.int32)  # 3 positives: 3 + 29
    _, pos, valid = f(jax.random.key(2), few)
    assert int(pos.sum()) == 3 and int(valid.sum()) == 32


# --- NMS -------------------------------------------------------------------------------------


def ref_nms(boxes, scores, thr, classes=None):
    """Greedy NMS in float32 numpy, one box at a time (the rule in cnnjax.ops.nms's docstring)."""
    order = np.argsort(-scores, kind="stable")
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    alive, keep = np.ones(len(boxes), bool), []
    for i in order:
        if not alive[i]:
            continue
        keep.append(i)
        lo = np.maximum(boxes[i, :2], boxes[:, :2])
        hi = np.minimum(boxes[i, 2:], boxes[:, 2:])
        inter = np.maximum(hi[:, 0] - lo[:, 0], 0) * np.maximum(hi[:, 1] - lo[:, 1], 0)
        iou = inter / (areas[i] + areas - inter)
        same = True if classes is None else classes == classes[i]
        alive &= ~((iou > thr) & same)
    return np.array(keep, np.int64)


def _kept(idx, valid):
    idx, valid = np.asarray(idx), np.asarray(valid)
    assert valid[: valid.sum()].all() and (idx[~valid] == -1).all()
    return idx[valid]


THRESHOLDS = np.array([0.0, 0.3, 0.5, 0.7, 1.0], np.float32)


def test_nms_equals_greedy_reference_for_every_threshold_and_ties():
    cases = 40
    bs = np.stack([_boxes(20, seed=s, size=12, integer=True) for s in range(cases)])
    rng = np.random.default_rng(9)
    scores = rng.integers(0, 4, (cases, 20)).astype(np.float32)  # many ties
    classes = rng.integers(0, 3, (cases, 20))
    f = jax.jit(
        jax.vmap(jax.vmap(N.nms, (None, None, 0, None)), (0, 0, None, None)), static_argnums=3
    )
    g = jax.vmap(jax.vmap(N.batched_nms, (None, None, None, 0, None)), (0, 0, 0, None, None))
    g = jax.jit(g, static_argnums=4)
    idx, valid = f(bs, scores, THRESHOLDS, 20)
    cidx, cvalid = g(bs, scores, classes, THRESHOLDS, 20)
    for c in range(cases):
        for t, thr in enumerate(THRESHOLDS):
            want = ref_nms(bs[c], scores[c], thr)
            np.testing.assert_array_equal(_kept(idx[c, t], valid[c, t]), want)
            want = ref_nms(bs[c], scores[c], thr, classes[c])
            np.testing.assert_array_equal(_kept(cidx[c, t], cvalid[c, t]), want)
    assert (np.asarray(valid[:, -1]).sum(-1) == 20).all()  # threshold 1 suppresses nothing


def test_nms_matches_torchvision_truncates_and_respects_valid():
    b = _boxes(60, seed=10)
    s = np.random.default_rng(11).permutation(60).astype(np.float32)  # distinct scores
    cls = np.random.default_rng(12).integers(0, 4, 60)
    for thr in (0.3, 0.6):
        want = tv.nms(_t(b[:, SWAP]), _t(s), float(thr)).numpy()
        np.testing.assert_array_equal(_kept(*N.nms(b, s, thr, 60)), want)
        np.testing.assert_array_equal(_kept(*N.nms(b, s, thr, 5)), want[:5])
        want = tv.batched_nms(_t(b[:, SWAP]), _t(s), _t(cls), float(thr)).numpy()
        np.testing.assert_array_equal(_kept(*N.batched_nms(b, s, cls, thr, 60)), want)
    keep = np.arange(60) % 2 == 0
    want = np.flatnonzero(keep)[ref_nms(b[keep], s[keep], 0.5)]
    np.testing.assert_array_equal(_kept(*N.nms(b, s, 0.5, 60, valid=keep)), want)
    idx, valid = N.nms(b, s, 0.5, 8, valid=np.zeros(60, bool))
    assert not np.asarray(valid).any() and (np.asarray(idx) == -1).all()


# --- RoI pooling -----------------------------------------------------------------------------

ROIS = np.array(
    [[2, 3, 14, 9], [0, 0, 18, 22], [-4, 5, 6, 30], [7.2, 7.7, 8.1, 8.4], [5, 2.5, 11.5, 13]],
    np.float32,
)  # (y1, x1, y2, x2) pixels of an 18x22 input; one leaves the image, one is tiny


def _feature(seed=13):
    return np.random.default_rng(seed).standard_normal((9, 11, 3)).astype(np.float32)


def _torch_roi(fn, feature, rois, cot, **kw):
    x = _t(feature).permute(2, 0, 1)[None].clone().requires_grad_()
    out = fn(x, _t(np.c_[np.zeros(len(rois)), rois[:, SWAP]].astype(np.float32)), **kw)
    out = out.permute(0, 2, 3, 1)
    (out * _t(cot)).sum().backward()
    return out.detach().numpy(), x.grad[0].permute(1, 2, 0).numpy()


@pytest.mark.parametrize("aligned", [True, False])
def test_roi_align_matches_torchvision_with_feature_gradient(aligned):
    x = _feature()
    cot = np.random.default_rng(14).standard_normal((5, 3, 2, 3)).astype(np.float32)
    kw = dict(output_size=(3, 2), spatial_scale=0.5, sampling_ratio=2, aligned=aligned)
    want, want_grad = _torch_roi(tv.roi_align, x, ROIS, cot, **kw)
    f = lambda x, b: R.roi_align(x, b, **kw)
    gx, gb = jax.jit(jax.grad(lambda x, b: jnp.sum(f(x, b) * cot), (0, 1)))(x, ROIS)
    np.testing.assert_allclose(jax.jit(f)(x, ROIS), want, atol=1e-5)
    np.testing.assert_allclose(gx, want_grad, atol=1e-5)
    assert not np.asarray(gb).any()  # no gradient into the boxes


def test_roi_pool_matches_torchvision_with_feature_gradient():
    x = _feature(15)
    cot = np.random.default_rng(16).standard_normal((5, 2, 3, 3)).astype(np.float32)
    want, want_grad = _torch_roi(tv.roi_pool, x, ROIS, cot, output_size=(2, 3), spatial_scale=0.5)
    f = jax.jit(lambda x, b: jnp.sum(R.roi_pool(x, b, (2, 3), 0.5) * cot))
    np.testing.assert_allclose(R.roi_pool(x, ROIS, (2, 3), 0.5), want, atol=1e-6)
    np.testing.assert_allclose(jax.grad(f)(x, ROIS), want_grad, atol=1e-6)
    halves = np.array([[0, 5.0, 0, 17], [1, 1.0, 3, 3.0]], np.float32)  # 2.5 rounds up to 3
    zero_cot = np.zeros((2, 1, 1, 3), np.float32)
    want, _ = _torch_roi(tv.roi_pool, x, halves, zero_cot, output_size=1, spatial_scale=0.5)
    np.testing.assert_allclose(R.roi_pool(x, halves, 1, 0.5), want, atol=1e-6)


def test_roi_pool_matches_torchvision_on_many_boxes_of_every_size():
    """Boxes from one cell to larger than the map, partly or wholly outside it, bins of one
    cell to the whole map: the sparse-table lookups equal torchvision's loops."""
    x = np.random.default_rng(21).standard_normal((19, 23, 4)).astype(np.float32)
    rng = np.random.default_rng(22)
    lo = rng.uniform(-10, 45, (80, 2))
    boxes = np.concatenate([lo, lo + rng.uniform(0, 60, (80, 2))], 1).astype(np.float32)
    cot = rng.standard_normal((80, 3, 5, 4)).astype(np.float32)
    want, want_grad = _torch_roi(tv.roi_pool, x, boxes, cot, output_size=(3, 5), spatial_scale=0.5)
    f = jax.jit(lambda x, b: jnp.sum(R.roi_pool(x, b, (3, 5), 0.5) * cot))
    np.testing.assert_allclose(R.roi_pool(x, boxes, (3, 5), 0.5), want, atol=1e-6)
    np.testing.assert_allclose(jax.grad(f)(x, boxes), want_grad, atol=1e-5)


def test_spatial_pyramid_pool_whole_map_and_boxes():
    x = _feature(17)
    got = R.spatial_pyramid_pool(x, levels=(1, 2, 3))
    t = _t(x).permute(2, 0, 1)[None]
    want = [
        torch.nn.functional.adaptive_max_pool2d(t, n)[0].permute(1, 2, 0).reshape(-1)
        for n in (1, 2, 3)
    ]
    assert got.shape == (3 * (1 + 4 + 9),)
    np.testing.assert_allclose(got, torch.cat(want).numpy())
    got = R.spatial_pyramid_pool(x, ROIS, (1, 2), 0.5)
    parts = [R.roi_pool(x, ROIS, n, 0.5).reshape(5, -1) for n in (1, 2)]
    np.testing.assert_array_equal(got, np.concatenate(parts, axis=1))


def test_vmap_over_a_batch_equals_one_image_at_a_time():
    xs = np.stack([_feature(s) for s in (20, 21)])
    rois = np.stack([ROIS, ROIS[::-1] + 1])
    for fn in (R.roi_align, R.roi_pool):
        got = jax.vmap(lambda x, b, fn=fn: fn(x, b, 2, 0.5))(xs, rois)
        for i in range(2):
            np.testing.assert_allclose(got[i], fn(xs[i], rois[i], 2, 0.5), atol=1e-6)
    got = jax.vmap(B.iou_matrix)(rois, rois)
    np.testing.assert_allclose(got[1], B.iou_matrix(rois[1], rois[1]), atol=1e-7)


# --- bad inputs ------------------------------------------------------------------------------

_Z4, _Z5 = np.zeros((3, 4), np.float32), np.zeros((3, 5), np.float32)
BAD = [
    (lambda: B.iou_matrix(_Z5, _Z4), "(3, 5)"),
    (lambda: B.encode(_Z4, _Z5), "(3, 5)"),
    (lambda: B.match(np.zeros((2, 3)), np.ones(2, bool), 0.5, -0.1), "-0.1"),
    (lambda: B.match(np.zeros((2, 3)), np.ones(2, bool), 0.3, 0.6), "0.6"),
    (lambda: B.sample(np.zeros(4, np.int32), jax.random.key(0), 0, 0.5), "got 0"),
    (lambda: B.sample(np.zeros(4, np.int32), jax.random.key(0), 4, 1.5), "1.5"),
    (lambda: B.anchors((2, 2), 8, (32,), (-1.0,)), "-1.0"),
    (lambda: N.nms(_Z4, np.zeros(3), -0.5, 4), "-0.5"),
    (lambda: N.nms(_Z4, np.zeros(3), 0.5, 0), "got 0"),
    (lambda: N.nms(_Z5, np.zeros(3), 0.5, 2), "(3, 5)"),
    (lambda: R.roi_align(_feature(), _Z4, 0), "got 0"),
    (lambda: R.roi_align(_feature(), _Z4, 2, sampling_ratio=0), "got 0"),
    (lambda: R.roi_pool(_feature(), _Z5, 2), "(3, 5)"),
    (lambda: R.roi_pool(_feature(), _Z4, (2, 0)), "(2, 0)"),
    (lambda: R.spatial_pyramid_pool(_feature(), levels=(1, 0)), "(1, 0)"),
]


@pytest.mark.parametrize("call, shown", BAD)
def test_bad_inputs_raise_value_error_naming_the_value(call, shown):
    with pytest.raises(ValueError, match=re.escape(shown)):
        call()
