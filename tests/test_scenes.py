"""The embedded digits_scenes builder: determinism, split sizes, boxes tight around their class's
pixels, no overlap, empty scenes, the ignore border, and no digit shared across splits."""

import hashlib
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds
from scipy import ndimage

from cnnjax.data import scenes as S
from cnnjax.data.digits import split_indices


def prepare(data_dir):
    tfds.disable_progress_bar()
    builder = S.DigitsScenes(data_dir=data_dir)
    start = time.perf_counter()
    builder.download_and_prepare(file_format="array_record")
    return builder, time.perf_counter() - start


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return prepare(tmp_path_factory.mktemp("scenes"))


@pytest.fixture(scope="module")
def records(prepared):
    builder, _ = prepared
    return {s: list(builder.as_data_source(s)) for s in S.NUM_SCENES}


def file_digests(builder) -> dict[str, str]:
    files = sorted(p for p in builder.data_path.iterdir() if ".array_record" in p.name)
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_preparation_is_fast_and_byte_identical_across_dirs(prepared, tmp_path):
    first, seconds = prepared
    assert seconds < 30, f"preparing digits_scenes took {seconds:.1f}s"
    second, _ = prepare(tmp_path)
    digests = file_digests(first)
    assert len(digests) == 2 and digests == file_digests(second)


def test_split_sizes_features_and_metadata(prepared, records):
    builder, _ = prepared
    assert {s: len(r) for s, r in records.items()} == {"train": 3000, "test": 600}
    ex = records["train"][0]
    assert ex["image"].shape == (64, 64, 1) and ex["image"].dtype == np.uint8
    assert ex["segmentation"].shape == (64, 64) and ex["segmentation"].dtype == np.uint8
    assert ex["boxes"].dtype == np.float32 and ex["box_classes"].dtype == np.int64
    meta = builder.info.metadata
    assert (builder.data_path / "metadata.json").exists()
    assert meta["class_names"] == [str(d) for d in range(10)]
    assert meta["segmentation_class_names"][:2] == ["background", "0"]
    assert meta["ignore_index"] == 255 and meta["generation"]["seed"] == S.SEED


def every_scene(records):
    return [ex for split in records.values() for ex in split]


def test_values_are_in_range(records):
    for ex in every_scene(records):
        b = ex["boxes"]
        assert b.shape == (len(ex["box_classes"]), 4) and len(b) <= S.MAX_DIGITS
        assert (b >= 0).all() and (b <= 1).all()
        assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
        assert ((ex["box_classes"] >= 0) & (ex["box_classes"] <= 9)).all()
        assert set(np.unique(ex["segmentation"])) <= {*range(11), 255}


def pixel_box(mask: np.ndarray) -> list[int]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return [rows[0], cols[0], rows[-1] + 1, cols[-1] + 1]


def test_every_box_is_tight_around_its_class_pixels(records):
    for ex in every_scene(records):
        seg = ex["segmentation"]
        covered = np.zeros(seg.shape, bool)
        for box, cls in zip(ex["boxes"], ex["box_classes"], strict=True):
            edges = box * 64
            np.testing.assert_array_equal(edges, np.round(edges))  # on pixel edges, exactly
            t, lf, b, r = edges.astype(int)
            inside = seg[t:b, lf:r] == cls + 1
            assert pixel_box(inside) == [0, 0, b - t, r - lf]
            assert set(np.unique(seg[t:b, lf:r])) <= {0, cls + 1, 255}
            covered[t:b, lf:r] = True
        foreground = (seg >= 1) & (seg <= 10)
        assert not (foreground & ~covered).any()  # no labelled pixel outside every box
        # A canvas pixel is bright exactly where some digit's foreground is.
        np.testing.assert_array_equal(ex["image"][..., 0] >= S.THRESHOLD, foreground)


def test_boxes_do_not_overlap_even_dilated(records):
    for ex in every_scene(records):
        px = np.round(ex["boxes"] * 64).astype(int)  # edges: [top, left, bottom + 1, right + 1]
        for i in range(len(px)):
            for j in range(i + 1, len(px)):
                a, b = px[i], px[j]
                apart = a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1]
                assert apart, (a, b)


def test_scene_counts_and_scales_vary(records):
    counts = np.array([len(ex["boxes"]) for ex in records["train"]])
    assert 0.02 < (counts == 0).mean() < 0.1
    assert set(counts) == set(range(S.MAX_DIGITS + 1))
    heights = np.concatenate([ex["boxes"][:, 2] - ex["boxes"][:, 0] for ex in records["train"]])
    assert heights.min() * 64 < 14 and heights.max() * 64 > 24  # several scales
    assert len(np.unique(np.concatenate([ex["box_classes"] for ex in records["test"]]))) == 10


def test_ignore_border_is_exactly_the_ring_around_the_digits(records):
    for ex in every_scene(records):
        seg = ex["segmentation"]
        foreground = (seg >= 1) & (seg <= 10)
        ring = ndimage.binary_dilation(foreground, np.ones((3, 3), bool)) & ~foreground
        np.testing.assert_array_equal(seg == 255, ring)
        assert (seg == 255).any() == (len(ex["boxes"]) > 0)


def test_scenes_draw_only_their_own_splits_digits(records):
    images, labels = S.load_digits()
    pools = split_indices(labels)
    for split in S.NUM_SCENES:
        for i, scene in S.generate_split(split, images, labels):
            assert np.isin(scene["digit_ids"], pools[split]).all()
            np.testing.assert_array_equal(labels[scene["digit_ids"]], scene["box_classes"])
            # The records are these very scenes, in order.
            np.testing.assert_array_equal(records[split][i]["image"], scene["image"])


def test_compose_scene_is_a_pure_function_of_its_rng():
    images, labels = S.load_digits()
    a = S.compose_scene(np.random.default_rng(5), images[:50], labels[:50])
    b = S.compose_scene(np.random.default_rng(5), images[:50], labels[:50])
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert (a["digit_ids"] < 50).all()


def test_upsample_keeps_the_identity_and_constants():
    digit = np.random.default_rng(0).integers(0, 256, (8, 8)).astype(np.uint8)
    np.testing.assert_array_equal(S.upsample(digit, 8), digit)
    np.testing.assert_array_equal(S.upsample(np.full((8, 8), 77, np.uint8), 19), 77)
    up = S.upsample(digit, 16)
    assert up.shape == (16, 16) and up.dtype == np.uint8
    assert up.min() >= digit.min() and up.max() <= digit.max()
