"""The input path around the host pipeline: device prefetch that keeps checkpoints exact,
and grain worker processes (`data.workers`)."""

import numpy as np
import pytest

from cnnjax.config.base import base_config
from cnnjax.data import open_sources, pipeline
from cnnjax.engine.build import build_task
from cnnjax.engine.prefetch import DevicePrefetch


@pytest.fixture(scope="module")
def digits():
    c = base_config()
    c.model.name = "resnet20_cifar"
    train, _, info = open_sources(c.data)
    return train, build_task(c, info)


def _stream(digits, workers=0, batch_size=32):
    train, task = digits
    return pipeline.train_dataset(
        train, task.train_preprocess, task.features(), batch_size=batch_size, seed=5,
        workers=workers,
    )  # fmt: skip


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_prefetch_state_is_after_the_last_batch_handed_out(digits, depth):
    """However many batches were read ahead, a restore from get_state() continues with the
    batch after the last one trained."""
    put_calls = []
    it = DevicePrefetch(iter(_stream(digits)), lambda b: put_calls.append(1) or b, depth)
    seen = []
    for _ in range(3):
        host, device = next(it)
        assert device is host  # what `put` returned
        seen.append(host["index"])
        it.fill()
    assert len(put_calls) == 3 + depth  # read ahead by exactly `depth`
    state = it.get_state()
    fresh = iter(_stream(digits))
    fresh.set_state(state)
    ahead = next(it)[0]["index"]
    np.testing.assert_array_equal(next(fresh)["index"], ahead)
    plain = iter(_stream(digits))
    for want in seen:
        np.testing.assert_array_equal(next(plain)["index"], want)
    np.testing.assert_array_equal(next(plain)["index"], ahead)


def test_prefetch_refuses_a_negative_depth(digits):
    with pytest.raises(ValueError, match="data.device_prefetch must be >= 0, got -1"):
        DevicePrefetch(iter(_stream(digits)), lambda b: b, -1)


def test_worker_processes_are_deterministic_and_restore_exactly(digits):
    """Two grain worker processes: every record once per epoch, the same batches for the
    same seed, and a restored iterator continues exactly."""
    first = iter(_stream(digits, workers=2, batch_size=719))  # 2 batches = one epoch of 1438
    epoch = np.concatenate([next(first)["index"] for _ in range(2)])
    assert sorted(epoch) == list(range(1438))
    a = iter(_stream(digits, workers=2))
    b = iter(_stream(digits, workers=2))
    for _ in range(3):
        x, y = next(a), next(b)
        np.testing.assert_array_equal(x["index"], y["index"])
        np.testing.assert_array_equal(x["image"], y["image"])
        assert x["image"].dtype == np.uint8
    state = a.get_state()
    want = [next(a)["index"] for _ in range(3)]
    c = iter(_stream(digits, workers=2))
    c.set_state(state)
    for w in want:
        np.testing.assert_array_equal(next(c)["index"], w)


def _params(workdir):
    from flax import traverse_util

    from cnnjax.engine.checkpointing import Checkpointer

    ckpt = Checkpointer(workdir / "checkpoints", create=False)
    try:
        step, state = ckpt.read()
    finally:
        ckpt.close()
    return step, traverse_util.flatten_dict(state["params"], sep="/")


def test_a_run_with_prefetch_resumes_bitwise(tmp_path):
    """configs/resnet20_cifar.py:digits,smoke with two batches prefetched (read ahead of the
    checkpoint at step 2): 2 steps, then resumed to 4, equals 4 straight steps bit for bit."""
    from cnnjax.engine import trainer
    from tests.conftest import load_config

    def config(steps):
        return load_config(
            "configs/resnet20_cifar.py",
            "digits,smoke",
            [f"train.num_steps={steps}", "optim.schedule=constant", "data.device_prefetch=2",
             "data.image_size=16", "eval.num_samples=0"],
        )  # fmt: skip

    trainer.train_and_evaluate(config(4), tmp_path / "straight")
    trainer.train_and_evaluate(config(2), tmp_path / "resumed")
    trainer.train_and_evaluate(config(4), tmp_path / "resumed")
    (s1, a), (s2, b) = _params(tmp_path / "straight"), _params(tmp_path / "resumed")
    assert s1 == s2 == 4
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
