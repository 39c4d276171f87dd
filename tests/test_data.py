"""Data: the embedded digits builder, grain pipelines (determinism, resume, sharding,
exact eval padding), augmentation transforms, and the tfds catalogue path (mock data)."""

from unittest import mock

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from cnnjax.data import open_sources, pipeline
from cnnjax.data import transforms as T
from cnnjax.data.digits import split_indices
from cnnjax.engine.build import build_task
from cnnjax.errors import ConfigError
from tests.conftest import load_config


def train_ds(source, data_cfg, info, *, seed, process_index=0, process_count=1):
    """The trainer's train stream for a classification config's data group."""
    c = load_config("configs/resnet20_cifar.py", "digits")
    with c.unlocked():
        c.data = data_cfg
    task = build_task(c, info)
    return pipeline.train_dataset(
        source, task.train_preprocess, task.features(), batch_size=data_cfg.batch_size,
        seed=seed, process_index=process_index, process_count=process_count,
    )  # fmt: skip


def eval_ds(source, data_cfg, info, *, global_batch, process_index=0, process_count=1):
    c = load_config("configs/resnet20_cifar.py", "digits")
    with c.unlocked():
        c.data = data_cfg
    task = build_task(c, info)
    return pipeline.eval_dataset(
        source, task.eval_preprocess, task.features(), global_batch=global_batch,
        max_examples=data_cfg.max_eval_examples, process_index=process_index,
        process_count=process_count,
    )  # fmt: skip


@pytest.fixture(scope="module")
def digits():
    config = load_config("configs/resnet20_cifar.py", "digits")
    train, test, info = open_sources(config.data)
    return config, train, test, info


def first_indices(ds, n):
    it = iter(ds)
    return np.concatenate([next(it)["index"] for _ in range(n)])


def test_digits_split_is_fixed_stratified_and_complete(digits):
    _, train, test, info = digits
    assert (info.num_train, info.num_eval, info.num_classes) == (1438, 359, 10)
    assert info.image_shape == (8, 8, 1)
    from sklearn.datasets import load_digits

    labels = load_digits().target
    idx = split_indices(labels)
    assert len(np.intersect1d(idx["train"], idx["test"])) == 0
    assert len(idx["train"]) + len(idx["test"]) == 1797
    np.testing.assert_array_equal(idx["test"], split_indices(labels)["test"])
    counts = np.bincount(labels[idx["test"]], minlength=10)
    assert counts.min() >= 35  # every class in the test split, roughly 20% of each
    ex = train[0]
    assert ex["image"].dtype == np.uint8 and ex["image"].shape == (8, 8, 1)
    assert ex["image"].max() <= 255 and 0 <= ex["label"] < 10


def test_train_batches_have_documented_shapes(digits):
    """The host batches the stored 8x8 uint8 digits; the task's device stage makes the
    model's normalised float32 inputs at data.image_size."""
    config, train, _, info = digits
    batch = next(iter(train_ds(train, config.data, info, seed=0)))
    b, s = config.data.batch_size, config.data.image_size
    assert batch["image"].shape == (b, 8, 8, 1) and batch["image"].dtype == np.uint8
    assert batch["label"].dtype == np.int32 and batch["mask"].sum() == b
    task = build_task(config, info)
    inputs = task.device_preprocess(batch, jax.random.key(0))
    assert inputs["image"].shape == (b, s, s, 1) and inputs["image"].dtype == np.float32
    assert abs(float(inputs["image"].mean())) < 1.0  # normalised
    evaluated = task.device_preprocess(batch, None)["image"]
    np.testing.assert_allclose(float(evaluated.mean()), 0.0, atol=0.25)


def test_shuffle_is_deterministic_by_seed_and_reshuffles_each_epoch(digits):
    config, train, _, info = digits
    a = first_indices(train_ds(train, config.data, info, seed=3), 2)
    b = first_indices(train_ds(train, config.data, info, seed=3), 2)
    c = first_indices(train_ds(train, config.data, info, seed=4), 2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    data_cfg = config.data.copy_and_resolve_references()
    data_cfg.batch_size = 719  # two batches = exactly one epoch of 1438
    epochs = first_indices(train_ds(train, data_cfg, info, seed=0), 4)
    assert sorted(epochs[:1438]) == list(range(1438))
    assert sorted(epochs[1438:]) == list(range(1438))
    assert not np.array_equal(epochs[:1438], epochs[1438:])


def test_iterator_state_restores_exactly(digits):
    config, train, _, info = digits
    it = iter(train_ds(train, config.data, info, seed=0))
    for _ in range(3):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(2)]
    fresh = iter(train_ds(train, config.data, info, seed=0))
    fresh.set_state(state)
    for want in expected:
        got = next(fresh)
        np.testing.assert_array_equal(got["index"], want["index"])
        np.testing.assert_array_equal(got["image"], want["image"])  # augmentation too


def test_process_shards_union_to_the_global_batch(digits):
    config, train, _, info = digits
    single = next(iter(train_ds(train, config.data, info, seed=1)))
    parts = [
        next(iter(train_ds(train, config.data, info, seed=1, process_index=p, process_count=2)))
        for p in range(2)
    ]
    assert all(len(p["index"]) == config.data.batch_size // 2 for p in parts)
    assert sorted(np.concatenate([p["index"] for p in parts])) == sorted(single["index"])


@pytest.mark.parametrize("batch,processes", [(100, 1), (128, 1), (64, 2)])
def test_eval_covers_every_example_once_with_padding(digits, batch, processes):
    config, _, test, info = digits
    seen = []
    for p in range(processes):
        ds, num_batches = eval_ds(
            test, config.data, info, global_batch=batch, process_index=p, process_count=processes
        )
        batches = list(ds)
        assert len(batches) == num_batches == -(-359 // batch)
        for b in batches:
            seen += list(b["index"][b["mask"] > 0])
            assert (b["index"][b["mask"] == 0] == -1).all()
    assert sorted(seen) == list(range(359))


def test_transforms():
    rng = np.random.default_rng(0)
    img = rng.random((6, 6, 3)).astype(np.float32)
    crop = T.random_crop(img, 2, rng)
    assert crop.shape == img.shape
    flipped = [T.random_flip(img, np.random.default_rng(s)) for s in range(8)]
    assert any(np.array_equal(f, img[:, ::-1]) for f in flipped)
    assert any(np.array_equal(f, img) for f in flipped)
    flat = np.full((5, 5, 1), 0.3, np.float32)
    np.testing.assert_allclose(T.blur(flat, 1.0), flat, atol=1e-6)
    assert T.blur(img, 1.0).std() < img.std()
    assert np.isclose(T.gaussian_kernel(1.5).sum(), 1.0)
    norm = T.normalize(img, np.full(3, 0.5, np.float32), np.full(3, 0.25, np.float32))
    np.testing.assert_allclose(norm, (img - 0.5) / 0.25, rtol=1e-6)
    jit = T.color_jitter(img, 0.4, rng)
    assert jit.shape == img.shape and jit.min() >= 0 and jit.max() <= 1
    noisy = T.add_noise(img, 0.1, rng)
    assert 0.05 < float((noisy - img).std()) < 0.15
    up = T.resize((img * 255).astype(np.uint8), 12)
    assert up.shape == (12, 12, 3) and up.dtype == np.uint8
    rect = T.center_crop_resize(np.zeros((10, 20, 3), np.uint8), 8)
    assert rect.shape == (8, 8, 3)


def test_bad_records_are_named(digits):
    config, _, _, info = digits
    prep = build_task(config, info).eval_preprocess
    good = {"image": np.zeros((8, 8, 1), np.uint8), "label": 3, "index": 7}
    assert prep(good)["label"] == 3
    with pytest.raises(ValueError, match="record 7: label 10 outside"):
        prep({**good, "label": 10})
    with pytest.raises(ValueError, match="record 7: image must be uint8"):
        prep({**good, "image": np.zeros((8, 8, 1), np.float32)})
    with pytest.raises(ValueError, match="record 7: image has 3 channels"):
        prep({**good, "image": np.zeros((8, 8, 3), np.uint8)})


def test_unknown_dataset_suggests_the_closest():
    config = load_config("configs/resnet20_cifar.py", "smoke")
    with config.unlocked():
        config.data.name = "cifar11"
    with pytest.raises(ConfigError, match="unknown dataset 'cifar11'.*Did you mean 'cifar1"):
        open_sources(config.data)


def test_unprepared_catalogue_dataset_says_how_to_prepare(tmp_path):
    config = load_config("configs/resnet20_cifar.py", "smoke")
    with config.unlocked():
        config.data.data_dir = str(tmp_path)
    with pytest.raises(
        ConfigError, match="not prepared.*tfds build cifar10 --file_format=array_record"
    ):
        open_sources(config.data)


def test_catalogue_dataset_through_tfds_mock_data(tmp_path):
    """cifar10 read through the same tfds data-source + grain path (tfds mock data)."""
    config = load_config("configs/resnet20_cifar.py", "smoke")
    with config.unlocked():
        config.data.data_dir = str(tmp_path)
    with (
        tfds.testing.mock_data(num_examples=40, policy=tfds.testing.MockPolicy.USE_CODE),
        mock.patch.object(tfds.core.DatasetBuilder, "is_prepared", return_value=True),
    ):
        train, test, info = open_sources(config.data)
        assert (info.num_classes, info.image_shape, info.num_train) == (10, (32, 32, 3), 40)
        batch = next(iter(train_ds(train, config.data, info, seed=0)))
        assert batch["image"].shape == (config.data.batch_size, 32, 32, 3)
        ds, n = eval_ds(test, config.data, info, global_batch=16)
        assert sum(b["mask"].sum() for b in ds) == 40 and n == 3


def test_host_vflip_mirrors_up_down_half_the_time():
    """`Augment(vflip=True)` on the host (segmentation, detection, reconstruction): each image
    comes back as it was or mirrored top to bottom, both over a few draws."""
    image = np.arange(12, dtype=np.float32).reshape(4, 3, 1) / 12
    seen = set()
    for seed in range(16):
        out = T.augment_image(image, T.Augment(vflip=True), np.random.default_rng(seed))
        if np.array_equal(out, image):
            seen.add("same")
        else:
            np.testing.assert_array_equal(out, image[::-1])
            seen.add("flipped")
    assert seen == {"same", "flipped"}
