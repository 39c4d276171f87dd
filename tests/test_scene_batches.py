"""Batches with boxes and masks: the embedded `digits_scenes` read through the same tfds +
grain path as every dataset, with a task (defined here) whose feature spec carries padded
boxes with a validity mask, box classes and a per-pixel class map; the box-aware
transforms keep every box around its digit's mask pixels, and eval padding follows the spec."""

import dataclasses
from typing import ClassVar

import numpy as np
import pytest

from cnnjax import tasks
from cnnjax.config import base as configlib
from cnnjax.data import geometry, open_sources, pipeline
from cnnjax.data.features import Feature
from cnnjax.errors import ConfigError
from cnnjax.tasks.base import Task

MAX_BOXES = 6


@dataclasses.dataclass(frozen=True)
class SceneTargets(Task):
    """Only the data side of a detection / segmentation task (no training here)."""

    name: ClassVar[str] = "test_scene_targets"

    @classmethod
    def check_info(cls, info):
        missing = {"image", "boxes", "box_classes", "segmentation"} - set(info.features)
        if missing:
            raise ConfigError(f"test_scene_targets needs {sorted(missing)}")

    def features(self):
        s = self.image_size
        return {
            "image": Feature((s, s, 1), "float32"),
            "boxes": Feature((MAX_BOXES, 4), "float32"),
            "box_classes": Feature((MAX_BOXES,), "int32", 0, 0, 10),
            "box_mask": Feature((MAX_BOXES,), "float32"),
            "segmentation": Feature((s, s), "int32", 255, 0, 11),
        }

    def preprocess(self, record, rng):
        keys = ("image", "boxes", "box_classes", "segmentation")
        ex = {k: np.asarray(record[k]) for k in keys}
        if rng is not None:
            ex = geometry.random_crop_with_padding(ex, 8, rng)
            ex = geometry.random_flip(ex, rng, horizontal=True, vertical=True)
        ex = geometry.resize(ex, self.image_size, self.image_size)
        boxes, classes, valid = geometry.pad_boxes(ex["boxes"], ex["box_classes"], MAX_BOXES)
        return {
            "image": ex["image"].astype(np.float32) / 255.0,
            "boxes": boxes,
            "box_classes": classes,
            "box_mask": valid,
            "segmentation": ex["segmentation"].astype(np.int32),
        }

    model_kwargs = loss = eval_outputs = metric = predict = visualize = lambda *a, **k: None


@pytest.fixture(scope="module")
def scenes():
    tasks.register(SceneTargets, replace=True)
    c = configlib.base_config()
    c.data.name = "digits_scenes"
    train, test, info = open_sources(c.data)
    return train, test, info


def _task(info, size=64):
    return tasks.create("test_scene_targets", info, image_size=size)


def test_scenes_open_like_any_dataset_and_describe_their_features(scenes):
    train, test, info = scenes
    assert (len(train), len(test)) == (3000, 600) and info.image_shape == (64, 64, 1)
    assert info.features["boxes"].shape == (None, 4) and info.num_classes is None
    assert info.metadata["ignore_index"] == 255
    with pytest.raises(ConfigError, match="task 'classification' needs a class 'label'"):
        tasks.create("classification", info, image_size=64)
    assert tasks.create("reconstruction", info, image_size=64).model_kwargs() == {"out_channels": 1}


def test_train_batches_keep_every_box_around_its_digit_under_crop_and_flips(scenes):
    train, _, info = scenes
    task = _task(info)
    ds = pipeline.train_dataset(
        train, task.train_preprocess, task.features(), batch_size=32, seed=1
    )
    checked = 0
    for batch, _ in zip(ds, range(3), strict=False):
        assert (
            batch["boxes"].shape == (32, MAX_BOXES, 4) and batch["segmentation"].dtype == np.int32
        )
        for i in range(32):
            seg = batch["segmentation"][i]
            bright = batch["image"][i, ..., 0] >= 64 / 255
            np.testing.assert_array_equal(bright, (seg >= 1) & (seg <= 10))  # moved together
            inside = np.zeros(seg.shape, bool)
            rows = (batch[k][i] for k in ("boxes", "box_classes", "box_mask"))
            for box, cls, ok in zip(*rows, strict=True):
                if not ok:
                    assert not box.any()  # padded rows are zeros
                    continue
                y1, x1, y2, x2 = np.rint(box * 64).astype(int)
                assert 0 <= y1 < y2 <= 64 and 0 <= x1 < x2 <= 64
                region = seg[y1:y2, x1:x2]
                assert (region == cls + 1).any()  # its digit is inside its box
                inside[y1:y2, x1:x2] |= region == cls + 1
                checked += 1
            assert ((seg >= 1) & (seg <= 10) & ~inside).sum() == 0  # no digit pixel outside
    assert checked > 100


def test_eval_padding_follows_the_feature_spec(scenes):
    _, test, info = scenes
    task = _task(info, size=32)
    ds, n = pipeline.eval_dataset(
        test, task.eval_preprocess, task.features(), global_batch=16, max_examples=20
    )
    batches = list(ds)
    assert n == 2 and sum(b["mask"].sum() for b in batches) == 20
    pad = batches[-1]
    real, fake = pad["mask"] > 0, pad["mask"] == 0
    assert fake.sum() == 12 and (pad["segmentation"][fake] == 255).all()
    assert not pad["box_mask"][fake].any() and (pad["index"][fake] == -1).all()
    assert set(np.unique(pad["segmentation"][real])) <= set(range(11)) | {255}
