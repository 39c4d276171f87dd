"""Multi-host start-up: argument checks, SLURM detection, and 2 CPU processes on localhost
training to the same result as 1 process with the same global batch."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from cnnjax.errors import ConfigError
from cnnjax.runtime import distributed
from tests.conftest import ROOT
from tests.multiprocess_check import check_two_match_one

SMOKE = "configs/resnet20_cifar.py:digits,smoke"


def test_single_process_and_slurm_detection():
    assert distributed.check_args(None, None, None) is False
    assert distributed.check_args("h:1234", 1, 0) is False  # one process: nothing to join
    assert distributed.check_args("h:1234", 2, 1) is True
    assert distributed.in_slurm_job({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"})
    assert not distributed.in_slurm_job({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"})
    assert not distributed.in_slurm_job({})


@pytest.mark.parametrize(
    "args,message",
    [
        (("h:1", 2, None), r"missing \['process_id'\]"),
        (("h:1", 2, 2), r"--process_id must be in \[0, 2\)"),
        (("h:1", 0, 0), "--num_processes must be >= 1, got 0"),
        (("host", 2, 0), "--coordinator_address must be HOST:PORT, got 'host'"),
    ],
)
def test_bad_arguments_are_config_errors(args, message):
    with pytest.raises(ConfigError, match=message):
        distributed.check_args(*args)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
    port = _free_port()
    cmd = [sys.executable, "-m", "tests.multiprocess_check", str(tmp_path), str(port)]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    procs = [
        subprocess.Popen([*cmd, str(i), "2"], cwd=ROOT, stderr=subprocess.PIPE, text=True, env=env)
        for i in range(2)
    ]
    single = subprocess.run([*cmd, "0", "1"], cwd=ROOT, capture_output=True, text=True,
                            timeout=600)  # fmt: skip
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert single.returncode == 0, single.stderr[-2000:]
    rev = subprocess.run([*cmd, "0", "1", "reversed"], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)  # fmt: skip
    assert rev.returncode == 0, rev.stderr[-2000:]
    assert all(p.returncode == 0 for p in procs), errs[0][-2000:] + errs[1][-2000:]
    check_two_match_one(tmp_path)


def _start_two(workdir):
    port = _free_port()
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    args = [sys.executable, "-m", "cnnjax.train", f"--config={SMOKE}", f"--workdir={workdir}",
            "--config.train.num_steps=100000", "--config.train.record_log=True",
            "--config.train.checkpoint_every_steps=100000", "--config.eval.every_steps=100000",
            f"--coordinator_address=localhost:{port}", "--num_processes=2"]  # fmt: skip
    return [
        subprocess.Popen(
            [*args, f"--process_id={i}"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )  # fmt: skip
        for i in range(2)
    ]


def _wait_training(procs, workdir, past_step):
    from cnnjax.engine.guards import read_records

    deadline = time.time() + 300
    while not read_records(workdir / "records.jsonl") or (
        read_records(workdir / "records.jsonl")[-1]["step"] <= past_step
    ):
        assert all(p.poll() is None for p in procs), procs[0].communicate()[1][-2000:]
        assert time.time() < deadline, "the two processes did not start training"
        time.sleep(0.1)


def test_two_processes_preempt_together_and_exit_together_when_one_dies(tmp_path):
    """SIGTERM to process 1 only: JAX's preemption sync makes both save the same step and
    exit 75. After the restart (resuming there) process 1 is killed: process 0, the
    coordinator, exits 4 with a message at its next collective instead of hanging, or
    aborting at JAX's shutdown barrier after the 100 s heartbeat timeout."""
    from cnnjax.errors import EXIT_PEER_FAILED, EXIT_PREEMPTED

    workdir = tmp_path / "run"
    procs = _start_two(workdir)
    try:
        _wait_training(procs, workdir, 1)
        procs[1].send_signal(signal.SIGTERM)
        out = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [EXIT_PREEMPTED] * 2, out[0][1][-2000:]
    steps = [int(err.split("saved a checkpoint at step ")[1].split(";")[0]) for _, err in out]
    assert steps[0] == steps[1] > 1
    ckpts = sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert ckpts == [str(steps[0])]

    procs = _start_two(workdir)
    try:
        _wait_training(procs, workdir, steps[0] + 1)
        procs[1].kill()
        killed = time.perf_counter()
        stdout, err = procs[0].communicate(timeout=180)
        took = time.perf_counter() - killed
    finally:
        for p in procs:
            p.kill()
    assert f"resuming at {steps[0]}" in stdout
    assert procs[0].returncode == EXIT_PEER_FAILED, err[-3000:]
    assert "most likely because another process of this run died" in err
    assert took < 120, f"the surviving process took {took:.0f} s to exit"
