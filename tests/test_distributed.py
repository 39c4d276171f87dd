"""Multi-host start-up: argument checks, SLURM detection, and 2 CPU processes on localhost
training to the same result as 1 process with the same global batch."""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from cnnjax import distributed
from cnnjax.errors import ConfigError
from tests.conftest import ROOT

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
    assert all(p.returncode == 0 for p in procs), errs[0][-2000:] + errs[1][-2000:]
    one = json.loads((tmp_path / "result1.json").read_text())
    two = json.loads((tmp_path / "result2.json").read_text())
    assert (one["processes"], two["processes"], two["devices"]) == (1, 2, 2)
    # Same tolerances as the 1-vs-8-device test (tests/test_trainer.py): BN's one-pass
    # variance over two shards rounds differently.
    np.testing.assert_allclose(one["losses"], two["losses"], rtol=2e-3)
    p1, p2 = np.load(tmp_path / "params1.npz"), np.load(tmp_path / "params2.npz")
    assert sorted(p1.files) == sorted(p2.files)
    assert max(float(np.abs(p1[k] - p2[k]).max()) for k in p1.files) < 1e-3
    assert one["eval"]["num_examples"] == two["eval"]["num_examples"] == 64
    assert abs(one["eval"]["loss"] - two["eval"]["loss"]) < 1e-2 * max(1.0, one["eval"]["loss"])


def test_when_one_process_dies_the_other_exits_with_a_clear_error(tmp_path):
    """Process 1 is killed mid-run: process 0 (the coordinator) stops at its next collective
    with exit code 4 and a message, instead of hanging or aborting at JAX's shutdown
    barrier after the 100 s heartbeat timeout."""
    from cnnjax.errors import EXIT_PEER_FAILED
    from cnnjax.guards import read_records

    port, workdir = _free_port(), tmp_path / "run"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cnnjax.train",
                f"--config={SMOKE}",
                f"--workdir={workdir}",
                "--config.train.num_steps=100000",
                "--config.train.record_log=True",
                "--config.eval.every_steps=100000",
                f"--coordinator_address=localhost:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(2)
    ]
    try:
        deadline = time.time() + 300
        while len(read_records(workdir / "records.jsonl")) < 2:
            assert all(p.poll() is None for p in procs), procs[0].communicate()[1][-2000:]
            assert time.time() < deadline, "the two processes did not start training"
            time.sleep(0.1)
        procs[1].kill()
        killed = time.perf_counter()
        _, err = procs[0].communicate(timeout=180)
        took = time.perf_counter() - killed
    finally:
        for p in procs:
            p.kill()
    assert procs[0].returncode == EXIT_PEER_FAILED, err[-3000:]
    assert "most likely because another process of this run died" in err
    assert took < 120, f"the surviving process took {took:.0f} s to exit"
