"""A resumed run equals an uninterrupted one, bit for bit: SIGKILL at random points (chaos),
SIGTERM preemption (save, exit 75, resume), and the non-finite step guard end to end."""

import json
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest

from cnnjax.errors import EXIT_NONFINITE, EXIT_PREEMPTED
from cnnjax.logs.writers import read_metrics
from cnnjax.tools import chaos
from tests.conftest import ROOT, run_cli

STEPS = 10


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run of the chaos command (record log on)."""
    workdir = tmp_path_factory.mktemp("resume") / "reference"
    cmd = chaos.command(workdir, STEPS)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return workdir


def _start(workdir, *extra):
    return subprocess.Popen(
        chaos.command(workdir, STEPS) + list(extra),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_step(proc, workdir, step, timeout=300):
    deadline = time.time() + timeout
    while chaos._records_step(workdir) < step:
        assert proc.poll() is None, f"run ended early: {proc.communicate()[1][-2000:]}"
        assert time.time() < deadline, f"no step {step} after {timeout} s"
        time.sleep(0.02)


def _steps(workdir):
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def test_sigterm_saves_within_10s_exits_75_and_resume_is_bitwise_equal(reference, tmp_path):
    workdir = tmp_path / "preempted"
    # Checkpoints far apart: the SIGTERM save is the only one after step 0.
    proc = _start(workdir, "--config.train.checkpoint_every_steps=1000")
    _wait_for_step(proc, workdir, 3)
    sent = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    took = time.perf_counter() - sent
    assert proc.returncode == EXIT_PREEMPTED, err[-2000:]
    assert took < 10, f"SIGTERM to exit took {took:.1f} s"
    saved = int(err.split("saved a checkpoint at step ")[1].split(";")[0])
    assert 3 <= saved < STEPS
    assert _steps(workdir) == [saved]
    done = subprocess.run(chaos.command(workdir, STEPS), cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resuming at {saved}" in done.stdout
    assert chaos.differences(reference, workdir) == []


def test_sigterm_before_the_first_step_exits_75_at_once(tmp_path):
    """While the first step compiles (no persistent cache) a Python handler could not run;
    the watcher thread exits right away since nothing has been trained."""
    workdir = tmp_path / "early"
    proc = _start(workdir, "--config.train.compilation_cache_dir=off")
    deadline = time.time() + 300
    while not (workdir / "config.json").exists():  # set-up done, the trainer's handler is in
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-2000:]
        time.sleep(0.01)
    sent = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    took = time.perf_counter() - sent
    assert proc.returncode == EXIT_PREEMPTED, err[-2000:]
    assert took < 10, f"SIGTERM to exit took {took:.1f} s"
    assert "preempted (SIGTERM)" in err


def test_chaos_kills_during_steps_saves_and_cleanup_end_bitwise_equal(reference, tmp_path):
    made, diffs = chaos.run_chaos(kills=3, steps=STEPS, seed=5, root=tmp_path, reference=reference)
    assert (made, diffs) == (3, []), (tmp_path / "train.log").read_text()[-3000:]


def test_chaos_command_rejects_a_run_without_kills():
    proc = run_cli("cnnjax.tools.chaos", "--kills=0")
    assert proc.returncode == 2 and "need --kills >= 1" in proc.stderr


def test_chaos_compares_bit_for_bit(reference, tmp_path):
    """The comparison the chaos tests rely on notices a one-ulp change in one parameter."""
    import jax
    import orbax.checkpoint as ocp

    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(reference), str(copy)], check=True)
    assert chaos.differences(reference, copy) == []
    step, state, _ = chaos.final_state(copy)
    ckpt_dir = copy / "checkpoints" / str(step) / "state"
    restored = ocp.StandardCheckpointer().restore(ckpt_dir)
    leaf = restored["params"]["fc"]["bias"]
    restored["params"]["fc"]["bias"] = np.nextafter(leaf, np.inf).astype(leaf.dtype)
    shutil.rmtree(ckpt_dir)
    with ocp.StandardCheckpointer() as c:
        c.save(ckpt_dir, jax.tree.map(np.asarray, restored))
    assert chaos.differences(reference, copy) == ["params/fc/bias differs"]


# SGD, lr 0.1 for steps 1-4, then 1e31: step 5 blows up. The same schedule in every run of
# these tests, so that they share one compiled train step.
EXPLODES_AT_5 = (
    "--config.train.num_steps=8",
    "--config.optim.schedule=piecewise",
    "--config.optim.boundaries=(0.5,)",
    "--config.optim.decay_factor=1e32",
    "--config.train.checkpoint_every_steps=2",
    "--config.train.log_every_steps=2",
    "--config.eval.every_steps=1000",
)


def _train(workdir, *overrides):
    return run_cli(
        "cnnjax.train",
        "--config=configs/resnet20_cifar.py:digits,smoke",
        f"--workdir={workdir}",
        *EXPLODES_AT_5,
        *overrides,
    )


@pytest.fixture(scope="module")
def diverged(tmp_path_factory):
    """(workdir, CompletedProcess) of a run that stops at its non-finite step 5."""
    workdir = tmp_path_factory.mktemp("nonfinite") / "stop"
    return workdir, _train(workdir)


def _params(workdir, step):
    import orbax.checkpoint as ocp

    state = ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(step) / "state")
    return state["params"]


def test_nonfinite_step_stops_exit_3_naming_step_and_records(diverged):
    workdir, proc = diverged
    assert proc.returncode == EXIT_NONFINITE, proc.stderr[-2000:]
    assert "non-finite loss, gradient or parameters at step 5, batch of records [" in proc.stderr
    assert _steps(workdir) == [2, 4]  # the last good checkpoint is kept, no bad one written
    again = _train(workdir)  # the same command stops at the same step, from checkpoint 4
    assert again.returncode == EXIT_NONFINITE and "resuming at 4" in again.stdout


def test_skip_policy_skips_every_bad_update_and_counts_them(diverged, tmp_path):
    workdir = tmp_path / "skip"
    proc = _train(workdir, "--config.train.nan_policy=skip")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [r for r in read_metrics(workdir) if r["split"] == "train"]
    assert [(r["step"], r["skipped_steps"]) for r in rows] == [(2, 0), (4, 0), (6, 2), (8, 4)]
    before, after = _params(diverged[0], 4), _params(workdir, 8)
    for a, b in zip(_leaves(before), _leaves(after), strict=True):
        assert a.tobytes() == b.tobytes()  # steps 5-8 changed no parameter
    meta = json.loads((workdir / "checkpoints" / "8" / "meta" / "metadata").read_text())
    assert meta["extra"]["skipped_steps"] == 4


def _leaves(tree):
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(tree)]
