"""Checkpoint integrity: corrupt or partial checkpoints are detected on restore, set aside
(never deleted) and the previous good one is used; non-finite steps; untrusted workdirs;
read errors naming the record."""

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax.engine import guards
from cnnjax.engine.checkpointing import Checkpointer, CheckpointsUnreadable, abstract_like
from cnnjax.errors import ConfigError
from tests.conftest import classification_step, image_inputs

REPL = jax.sharding.SingleDeviceSharding(jax.devices()[0])


def _state(step: int) -> dict:
    return {"w": jnp.full((64, 32), float(step)), "b": jnp.arange(32.0) * step}


def _write(directory: Path, steps=(1, 2), keep: int = 10) -> None:
    ckpt = Checkpointer(directory, keep=keep, best_metric="accuracy", tidy=True)
    for s in steps:
        ckpt.save(s, _state(s), {"next_index": 16 * s})
    ckpt.close()


def _restore(directory: Path, abstract=None):
    ckpt = Checkpointer(directory, keep=10, best_metric="accuracy", tidy=True)
    try:
        return ckpt.restore_latest(abstract or abstract_like(_state(0), REPL))
    finally:
        ckpt.close()


def _largest_file(path: Path) -> Path:
    return max((p for p in path.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _truncate(p: Path) -> None:
    f = _largest_file(p / "state")
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _garbage(p: Path) -> None:
    f = _largest_file(p / "state")
    data = bytearray(f.read_bytes())
    data[len(data) // 3 : len(data) // 3 + 64] = b"\xa5" * 64
    f.write_bytes(bytes(data))


def _empty(p: Path) -> None:
    shutil.rmtree(p)
    p.mkdir()


CORRUPTIONS = {
    "truncated array file": _truncate,
    "garbage bytes in array data": _garbage,
    # (A deleted state/_METADATA or process manifest is no corruption: Orbax restores the
    # intact arrays, and the checksums agree.)
    "garbage root manifest": lambda p: (p / "state" / "manifest.ocdbt").write_bytes(b"\0x" * 9),
    "deleted ocdbt manifest": lambda p: (p / "state" / "manifest.ocdbt").unlink(),
    "missing state item directory": lambda p: shutil.rmtree(p / "state"),
    "garbage iterator state json": lambda p: (p / "data" / "metadata").write_text("{not json"),
    "deleted checksum item": lambda p: shutil.rmtree(p / "meta"),
    "emptied step directory": _empty,
    "step directory replaced by a file": lambda p: (shutil.rmtree(p), p.write_text("x")),
    "array data files deleted": lambda p: [
        f.unlink() for f in (p / "state").rglob("*") if f.is_file() and f.parent.name == "d"
    ],
}


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corrupt_newest_is_set_aside_and_previous_used(tmp_path, name, capfd):
    _write(tmp_path)
    CORRUPTIONS[name](tmp_path / "2")
    step, state, data, _ = _restore(tmp_path)
    assert step == 1 and data == {"next_index": 16}
    np.testing.assert_array_equal(np.asarray(state["w"]), np.full((64, 32), 1.0))
    aside = [p.name for p in tmp_path.iterdir() if p.name.startswith("2.corrupt-")]
    assert len(aside) == 1 and not (tmp_path / "2").exists()  # moved, not deleted
    assert "set aside as 2.corrupt-" in capfd.readouterr().err
    # The run goes on: a new checkpoint 2 can be written and is then the newest.
    _write(tmp_path, steps=(2,))
    assert _restore(tmp_path)[0] == 2


def test_half_written_tmp_directory_is_set_aside_as_partial(tmp_path):
    _write(tmp_path)
    tmp = tmp_path / "3.orbax-checkpoint-tmp"
    shutil.copytree(tmp_path / "2", tmp)
    (tmp / "_CHECKPOINT_METADATA").unlink()
    assert _restore(tmp_path)[0] == 2
    assert [p.name.split("-")[0] for p in tmp_path.glob("3.partial-*")] == ["3.partial"]
    assert not tmp.exists()


def test_all_checkpoints_bad_is_a_clear_error_and_nothing_deleted(tmp_path):
    _write(tmp_path)
    for s in (1, 2):
        _truncate(tmp_path / str(s))
    with pytest.raises(CheckpointsUnreadable, match="no checkpoint in .* can be restored"):
        _restore(tmp_path)
    assert len(list(tmp_path.glob("*.corrupt-*"))) == 2


def test_other_state_structure_is_a_config_error_not_corruption(tmp_path):
    _write(tmp_path)
    other = {"w": jax.ShapeDtypeStruct((64, 32), jnp.float32, sharding=REPL)}
    with pytest.raises(ConfigError, match="another structure"):
        _restore(tmp_path, other)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1", "2"]  # nothing set aside


def test_retention_keeps_the_newest_and_the_best(tmp_path):
    ckpt = Checkpointer(tmp_path, keep=2, best_metric="accuracy", tidy=True)
    accuracy = {2: 0.9, 4: 0.5, 6: 0.4, 8: 0.3}
    for s in range(1, 9):
        ckpt.save(s, _state(s), {}, metrics={"accuracy": accuracy[s]} if s in accuracy else None)
    ckpt.close()
    assert sorted(int(p.name) for p in tmp_path.iterdir()) == [2, 7, 8]


def _tiny_state(lr: float):
    import flax.linen as nn
    import optax

    from cnnjax.engine.state import create_state

    class Tiny(nn.Module):
        num_classes: int = 3

        @nn.compact
        def __call__(self, x, train=False):
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x.reshape(len(x), -1))
            return nn.Dense(self.num_classes)(x), {}

    state = create_state(
        Tiny(), optax.sgd(lr, momentum=0.9), jax.random.key(0), image_inputs((2, 2, 1))
    )
    return state, classification_step(3)


def _batch(scale: float = 1.0):
    return {
        "image": jnp.arange(16.0).reshape(4, 2, 2, 1) * scale,
        "label": jnp.array([0, 1, 2, 0]),
        "mask": jnp.ones(4),
    }


@pytest.mark.parametrize("skip", [False, True])
def test_nonfinite_step_is_flagged_and_skip_keeps_the_old_state(skip):
    state, step_fn = _tiny_state(0.1)
    step = jax.jit(lambda s, b: guards.guarded_step(s, b, step_fn=step_fn, skip_nonfinite=skip))
    good, m = step(state, _batch())
    assert float(m["nonfinite"]) == 0.0 and int(good.step) == 1
    bad, m = step(good, _batch(np.inf))
    assert float(m["nonfinite"]) == 1.0 and int(bad.step) == 2
    for name in ("params", "batch_stats", "opt_state"):
        finite = all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(getattr(bad, name)))
        assert finite == skip, name
        if skip:
            same = jax.tree.map(lambda a, b: bool((a == b).all()), getattr(bad, name),
                                getattr(good, name))  # fmt: skip
            assert all(jax.tree.leaves(same)), name


def test_finite_check_stop_names_the_step_and_records_skip_counts():
    check = guards.FiniteCheck("stop")
    check.add(5, jnp.float32(0.0), np.array([3, 4]))
    check.add(6, jnp.float32(1.0), np.array([11, 12]))
    with pytest.raises(guards.NonFiniteError, match=r"at step 6, batch of records \[11, 12\]"):
        check.flush()
    check = guards.FiniteCheck("skip", skipped=2)
    check.add(7, jnp.float32(1.0), np.array([1]))
    check.flush()
    assert check.skipped == 3


def test_record_log_drops_rows_after_the_restored_step(tmp_path):
    log = guards.RecordLog(tmp_path, 0)
    for s in range(1, 6):
        log.append(s, np.array([s, s + 100]))
    log.close()
    with open(tmp_path / "records.jsonl", "a") as f:
        f.write('{"step": 6, "ids": [6')  # a kill mid-write
    log = guards.RecordLog(tmp_path, 3)
    log.append(4, np.array([9, 9]))
    log.close()
    rows = guards.read_records(tmp_path / "records.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and rows[-1]["ids"] == [9, 9]


def test_read_error_names_the_record_from_grain_threads():
    from cnnjax.data import pipeline
    from cnnjax.data.sources import ReadChecked
    from tests.conftest import classification_task

    class Broken:
        def __len__(self):
            return 40

        def __getitem__(self, i):
            if i == 7:
                raise OSError("bad block")
            return {"image": np.zeros((8, 8, 1), np.uint8), "label": 1}

    task = classification_task(10, image_size=8, channels=1)
    source = ReadChecked(Broken(), "x/train")
    ds = pipeline.train_dataset(
        source, task.train_preprocess, task.features(), batch_size=16, seed=0
    )
    with pytest.raises(ValueError, match=r"record 7 of x/train cannot be read \(OSError: bad"):
        for _ in zip(range(5), ds, strict=False):
            pass


def test_workdir_files_are_read_as_data_never_executed(tmp_path):
    from cnnjax.config import workdir as wd
    from tests.conftest import load_config, run_cli

    marker = tmp_path / "pwned"
    code = f"__import__('pathlib').Path({str(marker)!r}).write_text('x')"
    config = json.loads(json.dumps(wd.config_dict(load_config("configs/resnet20_cifar.py",
                                                               "digits,smoke"))))  # fmt: skip
    config["model"]["name"] = code
    config["data"]["aug"]["flip"] = f"!!python/object/apply:os.system ['touch {marker}']"
    (tmp_path / "config.json").write_text(json.dumps(config))
    for name in ("config.py", "__init__.py", "sitecustomize.py", "cnnjax.py"):
        (tmp_path / name).write_text(code + "\n")
    loaded = wd.load_config(tmp_path)
    assert loaded.model.name == code  # a plain string
    proc = run_cli("cnnjax.evaluate", f"--workdir={tmp_path}")
    assert proc.returncode != 0
    assert not marker.exists()
