"""The detection tasks' shared data side (cnnjax.tasks.detection): padded ground truth, boxes
that move with every augmentation, the bad-input rules, and VOC / COCO through tfds mock data."""

import logging

import jax
import numpy as np
import pytest

from cnnjax import tasks
from cnnjax.config import base as configlib
from cnnjax.data import open_sources
from cnnjax.data.sources import DataInfo, FeatureInfo
from cnnjax.data.transforms import Augment
from cnnjax.errors import ConfigError


def _info(num_classes=3, size=32):
    names = tuple(str(i) for i in range(num_classes))
    return DataInfo.synthetic(
        (size, size, 1), None,
        boxes=FeatureInfo((None, 4), "float32"),
        box_classes=FeatureInfo((None,), "int64", num_classes, names),
    )  # fmt: skip


def _task(info=None, **kw):
    kw = {"max_boxes": 4, **kw}
    return tasks.create("yolo_v1", info or _info(), image_size=kw.pop("image_size", 32), **kw)


def _record(boxes, classes, size=32, index=7):
    image = np.zeros((size, size, 1), np.uint8)
    for y1, x1, y2, x2 in np.nan_to_num(np.asarray(boxes, np.float64).reshape(-1, 4)):
        r0, r1 = int(round(y1 * size)), int(round(y2 * size))
        c0, c1 = int(round(x1 * size)), int(round(x2 * size))
        image[max(r0, 0) : max(r1, 0), max(c0, 0) : max(c1, 0)] = 255
    return {"image": image, "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
            "box_classes": np.asarray(classes, np.int64), "index": index}  # fmt: skip


def test_ground_truth_is_padded_with_a_validity_mask():
    task = _task()
    ex = task.eval_preprocess(_record([[0.1, 0.2, 0.5, 0.6], [0.5, 0.5, 0.75, 1.0]], [2, 0]))
    assert ex["boxes"].shape == (4, 4) and ex["box_classes"].dtype == np.int32
    np.testing.assert_array_equal(ex["box_valid"], [1, 1, 0, 0])
    np.testing.assert_allclose(ex["boxes"][:2], [[0.1, 0.2, 0.5, 0.6], [0.5, 0.5, 0.75, 1.0]])
    np.testing.assert_array_equal(ex["box_classes"], [2, 0, 0, 0])
    empty = task.eval_preprocess(_record(np.zeros((0, 4)), []))  # background only: valid
    assert empty["box_valid"].sum() == 0
    assert set(task.features()) == set(ex)


def test_bad_boxes_and_classes_are_errors_naming_the_record():
    task = _task()
    with pytest.raises(ValueError, match=r"record 7: inverted box \[0.5, 0.1, 0.2, 0.3\]"):
        task.eval_preprocess(_record([[0.5, 0.1, 0.2, 0.3]], [0]))
    with pytest.raises(ValueError, match=r"record 7: box class 3 outside \[0, 3\)"):
        task.eval_preprocess(_record([[0.1, 0.1, 0.2, 0.3]], [3]))
    with pytest.raises(ValueError, match="record 7: non-finite box"):
        task.eval_preprocess(_record([[0.1, np.nan, 0.2, 0.3]], [0]))
    with pytest.raises(ValueError, match="record 7: 2 boxes but 1 classes"):
        task.eval_preprocess(_record([[0.1, 0.1, 0.2, 0.3]] * 2, [0]))
    # outside the image: clipped; zero size (also after clipping): dropped
    ex = task.eval_preprocess(_record([[-0.2, 0.5, 0.4, 1.3], [0.3, 0.3, 0.3, 0.6],
                                       [1.1, 0.1, 1.3, 0.2]], [1, 2, 0]))  # fmt: skip
    np.testing.assert_allclose(ex["boxes"][0], [0.0, 0.5, 0.4, 1.0])
    assert ex["box_valid"].sum() == 1


def test_more_objects_than_max_boxes_is_an_error_or_a_logged_drop(caplog):
    boxes = [[0.0, 0.1 * i, 0.1 + 0.05 * i, 0.1 * i + 0.08] for i in range(6)]
    record = _record(boxes, [0, 1, 2, 0, 1, 2])
    with pytest.raises(ValueError, match="record 7: 6 objects do not fit .*max_boxes=4"):
        _task().eval_preprocess(record)
    with caplog.at_level(logging.WARNING):
        ex = _task(too_many="drop").eval_preprocess(record)
    assert "record 7: 6 objects, max_boxes 4: dropped the 2 smallest" in caplog.text
    np.testing.assert_array_equal(ex["box_classes"], [2, 0, 1, 2])  # the 4 largest, in order
    with pytest.raises(ConfigError, match="too_many must be one of"):
        _task(too_many="ignore")


def test_options_and_class_count_are_checked():
    with pytest.raises(ConfigError, match="num_classes 5 does not match .* 3 box classes"):
        _task(num_classes=5)
    info = DataInfo.synthetic((32, 32, 1), None, boxes=FeatureInfo((None, 4), "float32"))
    with pytest.raises(ConfigError, match="does not say how many box classes"):
        _task(info)
    with pytest.raises(ConfigError, match="nms_iou must be in"):
        _task(nms_iou=0.0)


def test_every_augmentation_keeps_the_boxes_on_their_objects():
    """Scale jitter, shifts and flips move image and boxes together: each kept box covers
    bright pixels and every bright pixel lies in a kept box."""
    task = _task(scale_jitter=0.3, augment=Augment(crop_padding=6, flip=True))
    record = _record([[0.1, 0.1, 0.4, 0.3], [0.5, 0.6, 0.9, 0.95], [0.55, 0.05, 0.7, 0.3]],
                     [0, 1, 2])  # fmt: skip
    rng = np.random.default_rng(0)
    for _ in range(40):
        ex = task.train_preprocess(record, rng)
        assert ex["image"].dtype == np.uint8  # the host batches uint8; the device normalises
        x = ex["image"][..., 0] / 255.0
        bright = x > 0.6  # a half-covered edge pixel (bilinear) reads 0.5
        covered = np.zeros_like(bright)
        for b in ex["boxes"][ex["box_valid"] > 0] * 32:
            r0, c0 = np.floor(b[:2]).astype(int)
            r1, c1 = np.ceil(b[2:]).astype(int)
            assert x[r0:r1, c0:c1].mean() > 0.4, "a box lost its object"
            covered[r0:r1, c0:c1] = True
        assert not (bright & ~covered).any(), "an object lost its box"


def test_the_device_stage_does_only_pixel_work_the_boxes_already_follow():
    """Scale, shifts and flips moved image and boxes together on the host; the device stage
    must not move the image again (boxes would misalign): with only geometric augmentations
    on, the training device stage equals the evaluation one (the normalised image), and
    colour jitter and noise change pixels only, never the boxes."""
    geometric = _task(scale_jitter=0.3, augment=Augment(crop_padding=6, flip=True, vflip=True))
    record = _record([[0.1, 0.1, 0.4, 0.3], [0.5, 0.6, 0.9, 0.95]], [0, 1])
    examples = [geometric.train_preprocess(record, np.random.default_rng(i)) for i in range(3)]
    batch = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
    trained = geometric.device_preprocess(batch, jax.random.key(5))
    evaluated = geometric.device_preprocess(batch, None)
    np.testing.assert_array_equal(np.asarray(trained["image"]), np.asarray(evaluated["image"]))
    expected = (batch["image"] / 255.0 - geometric.info.mean[0]) / geometric.info.std[0]
    np.testing.assert_allclose(np.asarray(evaluated["image"]), expected, atol=1e-5)
    for key in ("boxes", "box_classes", "box_valid"):
        np.testing.assert_array_equal(np.asarray(trained[key]), batch[key])
    colour = _task(augment=Augment(color_jitter=0.5, noise_std=0.1))
    changed = colour.device_preprocess(batch, jax.random.key(5))
    assert not np.array_equal(np.asarray(changed["image"]), np.asarray(evaluated["image"]))
    np.testing.assert_array_equal(np.asarray(changed["boxes"]), batch["boxes"])


def _voc_records(self, split, **kwargs):
    """tfds mock records shaped like voc/2007's: varying image sizes, nested `objects`."""
    rng = np.random.default_rng(0 if split == "test" else 1)
    out = []
    for i in range(6):
        h, w = 40 + 4 * i, 60 - 3 * i
        n = i % 3
        lo = rng.uniform(0, 0.5, (n, 2))
        boxes = np.concatenate([lo, lo + rng.uniform(0.1, 0.4, (n, 2))], 1).astype(np.float32)
        out.append({
            "image": rng.integers(0, 256, (h, w, 3), np.uint8),
            "image/filename": f"{i:06d}.jpg",
            "labels": np.arange(n, dtype=np.int64), "labels_no_difficult": np.arange(n),
            "objects": {"bbox": boxes, "label": rng.integers(0, 20, n),
                        "is_difficult": np.arange(n) == 1, "is_truncated": np.zeros(n, bool),
                        "pose": np.zeros(n, np.int64)},
        })  # fmt: skip
    return out


def test_voc_through_tfds_mock_data_with_difficult_objects_dropped(tmp_path):
    from unittest import mock

    import tensorflow_datasets as tfds

    c = configlib.base_config()
    configlib.detection_on_scenes(c, "yolo_v1")
    configlib.detection_on_voc(c, image_size=64)
    c.data.data_dir = str(tmp_path)
    with pytest.raises(ConfigError, match="not prepared.*tfds build voc/2007"):
        open_sources(c.data)
    with (
        tfds.testing.mock_data(as_data_source_fn=_voc_records),
        mock.patch.object(tfds.core.DatasetBuilder, "is_prepared", return_value=True),
    ):
        train, _, info = open_sources(c.data)
    task = tasks.create("yolo_v1", info, image_size=64, **c.task.kwargs)
    assert task.classes == 20 and task.class_names[:2] == ["aeroplane", "bicycle"]
    record = {**train[2], "index": 2}  # two objects, the second difficult
    ex = task.eval_preprocess(record)
    assert ex["image"].shape == (64, 64, 3) and ex["box_valid"].sum() == 1
    np.testing.assert_allclose(ex["boxes"][0], record["objects"]["bbox"][0], atol=1e-6)
    ex = task.train_preprocess(record, np.random.default_rng(0))
    assert ex["box_valid"].sum() <= 1


def _coco_info():
    """A DataInfo shaped like tfds coco/2017's (its builder needs TensorFlow to describe
    itself, so the suite describes it by hand; the records are what its data source yields)."""
    names = tuple(f"class{k}" for k in range(80))
    feats = {
        "image": FeatureInfo((None, None, 3), "uint8"),
        "image/id": FeatureInfo((), "int64"),
        "objects/area": FeatureInfo((None,), "int64"),
        "objects/bbox": FeatureInfo((None, 4), "float32"),
        "objects/id": FeatureInfo((None,), "int64"),
        "objects/is_crowd": FeatureInfo((None,), "bool"),
        "objects/label": FeatureInfo((None,), "int64", 80, names),
    }
    return DataInfo("coco/2017", 4, 4, feats, (0.5,) * 3, (0.25,) * 3)


def test_coco_shaped_records_with_crowd_boxes_dropped(tmp_path):
    c = configlib.base_config()
    c.data.name, c.data.data_dir = "coco/2017", str(tmp_path)
    with pytest.raises(ConfigError, match="coco/2017.*needs TensorFlow|not prepared"):
        open_sources(c.data)
    task = tasks.create("yolo_v1", _coco_info(), image_size=32, max_boxes=8,
                        boxes_key="objects/bbox", classes_key="objects/label",
                        ignore_key="objects/is_crowd")  # fmt: skip
    assert task.classes == 80
    record = {"image": np.zeros((48, 64, 3), np.uint8), "image/id": 3, "index": 0, "objects": {
        "area": np.array([100, 30]), "bbox": np.array([[0.1, 0.1, 0.5, 0.4], [0.6, 0.6, 0.7, 0.8]],
        np.float32), "id": np.array([6, 7]), "is_crowd": np.array([False, True]),
        "label": np.array([3, 79])}}  # fmt: skip
    ex = task.eval_preprocess(record)
    assert ex["box_valid"].sum() == 1 and ex["box_classes"][0] == 3
    np.testing.assert_allclose(ex["boxes"][0], [0.1, 0.1, 0.5, 0.4])
