"""Geometry transforms: a box, its mask pixels and its image pixels move together under every
transform; boxes leaving the image are dropped with their classes; crop padding; padding boxes."""

import numpy as np
import pytest

from cnnjax.data import geometry as G
from cnnjax.data import transforms as T

H, W = 32, 40
# Two bright rectangles (inclusive pixel ranges) with their box classes; mask value = class + 1.
RECTS = {3: (6, 8, 15, 19), 7: (20, 30, 27, 37)}


def make_example(dtype=np.float32) -> dict:
    image = np.zeros((H, W, 2), dtype)
    seg = np.zeros((H, W), np.uint8)
    boxes = []
    for cls, (t, lf, b, r) in RECTS.items():
        image[t : b + 1, lf : r + 1] = 200 if dtype == np.uint8 else 0.8
        seg[t : b + 1, lf : r + 1] = cls + 1
        boxes.append([t / H, lf / W, (b + 1) / H, (r + 1) / W])
    return {
        "image": image,
        "segmentation": seg,
        "boxes": np.asarray(boxes, np.float32),
        "box_classes": np.asarray(list(RECTS), np.int64),
        "id": 17,
    }


def pixel_edges(mask: np.ndarray) -> np.ndarray:
    """Bool [h, w] -> (top, left, bottom + 1, right + 1) of its True pixels, float."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return np.array([rows[0], cols[0], rows[-1] + 1, cols[-1] + 1], np.float64)


def assert_moved_together(out: dict, exact: bool):
    """Each surviving box bounds its class's mask pixels (exactly, or within half a pixel after
    resampling) and the bright image pixels coincide with the mask pixels."""
    h, w = out["segmentation"].shape
    assert out["image"].shape[:2] == (h, w) and out["id"] == 17
    assert out["boxes"].dtype == np.float32 and len(out["boxes"]) == len(out["box_classes"])
    bright = out["image"][..., 0] > out["image"].max() / 2
    for box, cls in zip(out["boxes"], out["box_classes"], strict=True):
        mask = out["segmentation"] == cls + 1
        edges = box.astype(np.float64) * [h, w, h, w]
        if exact:
            np.testing.assert_allclose(edges, pixel_edges(mask), atol=1e-4)
        else:
            assert np.abs(edges - pixel_edges(mask)).max() <= 0.5 + 1e-4
    fg = np.isin(out["segmentation"], [c + 1 for c in RECTS])
    if exact:
        np.testing.assert_array_equal(bright, fg)
    else:
        iou = (bright & fg).sum() / (bright | fg).sum()
        assert iou > 0.75, iou


EXACT = {
    "hflip": G.hflip,
    "vflip": G.vflip,
    "hflip_uint8": lambda ex: G.hflip({**ex, "image": (ex["image"] * 250).astype(np.uint8)}),
    "resize_2x": lambda ex: G.resize(ex, 2 * H, 2 * W),
    "crop_inside": lambda ex: G.crop(ex, 4, 10, 20, 25),
    "crop_past_edges": lambda ex: G.crop(ex, -5, 12, 30, 40),
    "random_flip_both": lambda ex: G.random_flip(ex, np.random.default_rng(1), vertical=True),
    **{
        f"random_crop_{s}": lambda ex, s=s: G.random_crop_with_padding(
            ex, 6, np.random.default_rng(s)
        )
        for s in range(4)
    },
}
RESAMPLED = {
    "resize_half": lambda ex: G.resize(ex, H // 2, W // 2),
    "resize_odd": lambda ex: G.resize(ex, 45, 29),
    **{
        f"random_scale_{s}": lambda ex, s=s: G.random_scale(ex, 0.6, 1.6, np.random.default_rng(s))
        for s in range(6)
    },
}


@pytest.mark.parametrize("name", list(EXACT))
def test_exact_transforms_move_box_mask_and_image_together(name):
    out = EXACT[name](make_example())
    assert len(out["boxes"]) >= 1
    assert_moved_together(out, exact=True)


@pytest.mark.parametrize("name", list(RESAMPLED))
def test_resampling_transforms_keep_boxes_within_half_a_pixel(name):
    out = RESAMPLED[name](make_example())
    assert len(out["boxes"]) >= 1
    assert_moved_together(out, exact=False)


def test_hflip_moves_a_single_pixel_to_the_mirror_column():
    ex = {"image": np.zeros((4, 5, 1), np.uint8), "segmentation": np.zeros((4, 5), np.uint8)}
    ex["image"][1, 0], ex["segmentation"][1, 0] = 255, 2
    ex["boxes"], ex["box_classes"] = np.array([[0.25, 0.0, 0.5, 0.2]], np.float32), np.array([1])
    out = G.hflip(ex)
    assert out["image"][1, 4, 0] == 255 and out["segmentation"][1, 4] == 2
    np.testing.assert_allclose(out["boxes"], [[0.25, 0.8, 0.5, 1.0]], atol=1e-6)


def test_flipping_twice_is_the_identity():
    ex = make_example()
    for flip in (G.hflip, G.vflip):
        twice = flip(flip(ex))
        assert twice.keys() == ex.keys()
        for key in ex:
            np.testing.assert_allclose(twice[key], ex[key], atol=1e-6)
        assert not np.array_equal(flip(ex)["segmentation"], ex["segmentation"])


def test_boxes_leaving_the_window_are_dropped_with_their_classes():
    ex = make_example()
    out = G.crop(ex, 0, 0, 18, 22)  # the class-7 rectangle lies wholly outside
    np.testing.assert_array_equal(out["box_classes"], [3])
    assert out["boxes"].shape == (1, 4)
    assert_moved_together(out, exact=True)
    gone = G.crop(ex, -40, 0, 20, 20)  # entirely above the image
    assert gone["boxes"].shape == (0, 4) and gone["box_classes"].shape == (0,)
    assert (gone["segmentation"] == 255).all() and (gone["image"] == 0).all()


def test_boxes_are_clipped_and_min_visible_drops_mostly_hidden_ones():
    ex = make_example()
    # Window rows 0..11: the class-3 rectangle (rows 6..15) keeps rows 6..11, 6 of 10 rows.
    out = G.crop(ex, 0, 0, 12, W)
    np.testing.assert_allclose(out["boxes"][0], [6 / 12, 8 / W, 1.0, 20 / W], atol=1e-6)
    np.testing.assert_array_equal(G.crop(ex, 0, 0, 12, W, min_visible=0.5)["box_classes"], [3])
    assert len(G.crop(ex, 0, 0, 12, W, min_visible=0.7)["boxes"]) == 0
    np.testing.assert_allclose(
        G.clip_boxes(np.array([[-0.2, 0.1, 1.3, 0.9]])), [[0.0, 0.1, 1.0, 0.9]]
    )


def test_crop_pads_outside_the_image_with_the_fill_values():
    ex = make_example(np.uint8)
    out = G.crop(ex, -3, -2, H + 5, W + 4, image_fill=9, mask_fill=255)
    assert out["image"].shape == (H + 5, W + 4, 2) and out["image"].dtype == np.uint8
    assert (out["image"][:3] == 9).all() and (out["image"][:, :2] == 9).all()
    assert (out["segmentation"][:3] == 255).all() and (out["segmentation"][-2:] == 255).all()
    np.testing.assert_array_equal(out["segmentation"][3 : 3 + H, 2 : 2 + W], ex["segmentation"])
    np.testing.assert_array_equal(out["image"][3 : 3 + H, 2 : 2 + W], ex["image"])


def test_random_crop_with_padding_is_the_box_aware_twin_of_random_crop():
    ex = make_example()
    for seed in range(5):
        out = G.random_crop_with_padding(ex, 4, np.random.default_rng(seed))
        want = T.random_crop(ex["image"], 4, np.random.default_rng(seed))
        np.testing.assert_array_equal(out["image"], want)


def test_random_transforms_are_seeded_and_vary():
    ex = make_example()
    flips = [G.random_flip(ex, np.random.default_rng(s))["boxes"][0, 1] for s in range(12)]
    assert len(set(np.round(flips, 5))) == 2  # some flipped, some not
    scaled = [G.random_scale(ex, 0.5, 1.5, np.random.default_rng(s)) for s in range(6)]
    assert all(s["image"].shape == ex["image"].shape for s in scaled)
    assert len({s["boxes"].tobytes() for s in scaled}) == 6
    again = G.random_scale(ex, 0.5, 1.5, np.random.default_rng(3))
    np.testing.assert_array_equal(again["segmentation"], scaled[3]["segmentation"])


def test_scale_down_lands_at_random_places_on_an_ignore_canvas():
    corners = set()
    for seed in range(6):
        out = G.random_scale(make_example(), 0.5, 0.5, np.random.default_rng(seed))
        inside = out["segmentation"] != 255
        assert inside.sum() == (H // 2) * (W // 2)
        corners.add(tuple(pixel_edges(inside)[:2]))
    assert len(corners) > 1


def test_transforms_accept_examples_without_boxes():
    ex = make_example()
    ex["boxes"], ex["box_classes"] = ex["boxes"][:0], ex["box_classes"][:0]
    for fn in list(EXACT.values()) + list(RESAMPLED.values()):
        out = fn(ex)
        assert out["boxes"].shape == (0, 4) and out["box_classes"].shape == (0,)
    with pytest.raises(ValueError, match="neither 'image' nor 'segmentation'"):
        G.crop({"boxes": ex["boxes"]}, 0, 0, 4, 4)


def test_drop_degenerate_removes_empty_boxes_with_their_classes():
    ex = {"boxes": np.array([[0.1, 0.1, 0.1, 0.5], [0.1, 0.1, 0.3, 0.5]], np.float32)}
    out = G.drop_degenerate({**ex, "box_classes": np.array([4, 5])})
    np.testing.assert_array_equal(out["box_classes"], [5])


def test_pad_boxes_pads_with_a_validity_mask_and_names_an_overflow():
    boxes, classes = make_example()["boxes"], np.array([3, 7])
    b, c, valid = G.pad_boxes(boxes, classes, 5)
    assert b.shape == (5, 4) and b.dtype == np.float32 and c.dtype == np.int32
    np.testing.assert_array_equal(valid, [1, 1, 0, 0, 0])
    np.testing.assert_array_equal(c, [3, 7, 0, 0, 0])
    np.testing.assert_array_equal(b[:2], boxes)
    assert (b[2:] == 0).all()
    with pytest.raises(ValueError, match="2 boxes do not fit max_boxes=1"):
        G.pad_boxes(boxes, classes, 1)
