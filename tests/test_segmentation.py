"""The segmentation task and its metrics: mIoU conventions against an independent
computation, the per-pixel loss with the ignore index by hand, masks that move with their
images, record and config errors, and a small model trained, evaluated and loaded through
the engine on the embedded scenes."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cnnjax
from cnnjax import models, tasks
from cnnjax.config import base as configlib
from cnnjax.data import open_sources
from cnnjax.data import transforms as T
from cnnjax.data.features import synthetic_batch
from cnnjax.data.sources import DataInfo, FeatureInfo
from cnnjax.engine import trainer
from cnnjax.errors import ConfigError
from cnnjax.metrics.segmentation import confusion_matrix, evaluate, from_confusion


def _independent(labels, preds, k, ignore=255):
    """Per-class IoU by set counting, pixel by pixel (no confusion matrix)."""
    labels, preds = np.ravel(labels), np.ravel(preds)
    keep = labels != ignore
    labels, preds = labels[keep], preds[keep]
    ious = []
    for c in range(k):
        inter = np.sum((labels == c) & (preds == c))
        union = np.sum((labels == c) | (preds == c))
        ious.append(inter / union if union else np.nan)
    return np.array(ious), float(np.mean(labels == preds))


def test_miou_conventions_against_an_independent_computation():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, (3, 9, 7))
    preds = rng.integers(0, 4, (3, 9, 7))
    labels[0, :2] = 255  # ignored pixels count nowhere
    preds[labels == 3] = 0  # class 3 is in the labels but never predicted: IoU 0
    labels[labels == 2] = 1  # class 2 is predicted but absent from the labels: IoU 0, counts
    k = 6  # classes 4 and 5 appear nowhere: NaN, left out of the mean
    got = evaluate(labels, preds, num_classes=k)
    ious, acc = _independent(labels, preds, k)
    np.testing.assert_allclose(got["per_class_iou"], ious)
    assert np.isnan(got["per_class_iou"][4]) and got["per_class_iou"][2] == 0
    assert got["miou"] == pytest.approx(np.nanmean(ious))
    assert got["pixel_accuracy"] == pytest.approx(acc)
    valid = labels != 255
    freq = np.bincount(labels[valid], minlength=k) / valid.sum()
    assert got["fwiou"] == pytest.approx(np.nansum(freq * ious))
    recall = [np.mean(preds[valid][labels[valid] == c] == c) for c in (0, 1, 3)]
    assert got["mean_accuracy"] == pytest.approx(np.mean(recall))
    with pytest.raises(ValueError, match="label 7 is outside"):
        evaluate(np.full((2, 2), 7), np.zeros((2, 2), int), num_classes=6)


def test_device_confusion_matrix_matches_the_host_metrics():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, (4, 5, 5)).astype(np.int32)
    labels[1, 0] = 255
    preds = rng.integers(0, 3, (4, 5, 5)).astype(np.int32)
    cm = np.asarray(jax.jit(confusion_matrix, static_argnums=2)(labels, preds, 3))
    assert cm.shape == (4, 3, 3) and cm.sum() == (labels != 255).sum()
    device, host = from_confusion(cm.sum(0)), evaluate(labels, preds, num_classes=3)
    assert device.pop("per_class_iou") == host.pop("per_class_iou") and device == host


def _scenes_info():
    c = configlib.base_config()
    c.data.name = "digits_scenes"
    return open_sources(c.data)


def _task(info, **kw):
    return tasks.create("segmentation", info, image_size=kw.pop("image_size", 32), **kw)


def test_loss_is_cross_entropy_over_labelled_pixels_by_hand():
    info = DataInfo.synthetic((4, 4, 1), None, segmentation=FeatureInfo((4, 4), "uint8", 3))
    task = _task(info, image_size=4)
    logits = jax.random.normal(jax.random.key(0), (2, 4, 4, 3))
    labels = np.array(jax.random.randint(jax.random.key(1), (2, 4, 4), 0, 3))
    labels[0, 0] = 255
    batch = {"image": jnp.zeros((2, 4, 4, 1)), "segmentation": jnp.asarray(labels),
             "mask": jnp.array([1.0, 0.0])}  # fmt: skip
    apply_fn = lambda v, x, train, **kw: ((logits, {}), {}) if train else (logits, {})
    out = task.loss(apply_fn, {}, batch, None)
    logp = np.asarray(jax.nn.log_softmax(logits, -1))[0]
    keep = labels[0] != 255
    ce = -np.take_along_axis(logp, np.where(keep, labels[0], 0)[..., None], -1)[..., 0]
    assert float(out.denominator) == keep.sum() == 12  # padded example and ignored row: none
    np.testing.assert_allclose(out.numerator, ce[keep].sum(), rtol=1e-5)


def test_masks_move_with_their_images_and_bad_masks_name_the_record():
    train, _, info = _scenes_info()
    task = _task(info, image_size=64, scale_jitter=0.2)
    task = dataclasses.replace(task, augment=dataclasses.replace(task.augment, flip=True,
                                                                 crop_padding=6))  # fmt: skip
    assert task.classes == 11 and task.features()["segmentation"].pad == 255
    for seed in range(6):
        ex = task.train_preprocess({**train[seed], "index": seed}, np.random.default_rng(seed))
        assert ex["image"].dtype == np.uint8  # the host moves pixels; the device normalises
        image = ex["image"][..., 0] / 255.0
        digit = (ex["segmentation"] >= 1) & (ex["segmentation"] <= 10)
        # Where a digit's label went, its bright pixels went too (resampling blurs edges).
        assert image[digit].mean() > 0.45 and image[ex["segmentation"] == 0].mean() < 0.05
    rec = {**train[0], "index": 7}
    with pytest.raises(ValueError, match="record 7: mask 'segmentation' is"):
        task.eval_preprocess({**rec, "segmentation": rec["segmentation"][:10]})
    with pytest.raises(ValueError, match="record 7: mask value 12 outside"):
        task.eval_preprocess({**rec, "segmentation": np.full((64, 64), 12, np.uint8)})
    with pytest.raises(ConfigError, match="num_classes 5 does not match dataset"):
        _task(info, num_classes=5)


class TinySegmenter(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        y = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Conv(8, (3, 3))(x)))
        return nn.Conv(self.num_classes, (3, 3))(y).astype(jnp.float32), {"stride1": y}


def test_a_segmenter_trains_evaluates_and_loads_through_the_engine(tmp_path):
    models.register("test_segmenter", TinySegmenter, replace=True)
    c = configlib.base_config()
    configlib.set_task(c, "segmentation")
    c.model.name = "test_segmenter"
    c.data.name = "digits_scenes"
    c.data.image_size = 32
    c.data.batch_size = 8
    c.data.max_eval_examples = 24
    c.optim.name = "adamw"
    c.optim.learning_rate = 1e-2
    c.train.num_steps = 4
    c.train.log_every_steps = 2
    c.train.checkpoint_every_steps = 4
    c.eval.every_steps = 4
    metrics = trainer.train_and_evaluate(c, tmp_path / "seg")
    assert metrics["num_examples"] == 24 and 0 <= metrics["miou"] <= 1
    assert len(metrics["per_class_iou"]) == 11
    assert (tmp_path / "seg" / "samples" / "step_0000004.png").stat().st_size > 1000
    run = cnnjax.load(tmp_path / "seg")
    _, test, _ = _scenes_info()
    pred = run.predict(np.stack([test[i]["image"] for i in range(3)]))
    assert pred.classes.shape == (3, 32, 32) and pred.probs.shape == (3, 32, 32, 11)
    assert len(run.show(np.stack([test[i]["image"] for i in range(2)])).axes) == 4


def _pets(self, split, **kwargs):
    """tfds mock records shaped like oxford_iiit_pet's: images of varying size with a
    matching trimap (1 pet, 2 background, 3 border)."""
    rng = np.random.default_rng(0 if split == "train" else 1)
    out = []
    for i in range(12):
        h, w = 40 + 3 * i, 56 - 2 * i
        trimap = np.full((h, w, 1), 2, np.uint8)
        trimap[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 1
        trimap[h // 4, w // 4 : 3 * w // 4] = 3
        out.append({"image": rng.integers(0, 256, (h, w, 3), np.uint8), "label": i % 37,
                    "species": i % 2, "file_name": f"{i}.jpg", "head_bbox": np.zeros(4, np.float32),
                    "segmentation_mask": trimap})  # fmt: skip
    return out


def test_a_catalogue_segmentation_dataset_through_tfds_mock_data(tmp_path):
    from unittest import mock

    import tensorflow_datasets as tfds

    c = configlib.base_config()
    c.data.name, c.data.data_dir = "oxford_iiit_pet", str(tmp_path)
    with pytest.raises(ConfigError, match="not prepared.*tfds build oxford_iiit_pet"):
        open_sources(c.data)
    with (
        tfds.testing.mock_data(as_data_source_fn=_pets),
        mock.patch.object(tfds.core.DatasetBuilder, "is_prepared", return_value=True),
    ):
        train, _, info = open_sources(c.data)
    assert info.features["segmentation_mask"].shape == (None, None, 1)
    with pytest.raises(ConfigError, match="does not say how many segmentation classes"):
        _task(info, mask_key="segmentation_mask")
    task = _task(info, mask_key="segmentation_mask", num_classes=2, mask_values=(255, 1, 0, 255))
    ex = task.eval_preprocess({**train[3], "index": 3})
    seg = ex["segmentation"]
    assert ex["image"].shape == (32, 32, 3) and {0, 1} <= set(np.unique(seg)) <= {0, 1, 255}
    assert seg[16, 16] == 1 and seg[1, 16] == 0  # pet in the middle, background around


def test_the_device_stage_does_only_pixel_work_the_masks_already_follow():
    """Crop and flips moved image and mask together on the host; the device stage must not
    move the image again (masks would misalign): with only geometric augmentations on, the
    training device stage equals the evaluation one, and colour jitter changes pixels only."""
    info = DataInfo.synthetic((16, 16, 1), None, segmentation=FeatureInfo((16, 16), "uint8", 3))
    geometric = _task(info, image_size=16, augment=T.Augment(crop_padding=4, flip=True,
                                                              vflip=True))  # fmt: skip
    batch = synthetic_batch(geometric.features(), 4, seed=2)
    assert batch["image"].dtype == np.uint8
    trained = geometric.device_preprocess(batch, jax.random.key(5))
    evaluated = geometric.device_preprocess(batch, None)
    np.testing.assert_array_equal(np.asarray(trained["image"]), np.asarray(evaluated["image"]))
    np.testing.assert_array_equal(np.asarray(trained["segmentation"]), batch["segmentation"])
    jitter = _task(info, image_size=16, augment=T.Augment(color_jitter=0.5))
    changed = jitter.device_preprocess(batch, jax.random.key(5))["image"]
    assert not np.array_equal(np.asarray(changed), np.asarray(evaluated["image"]))
