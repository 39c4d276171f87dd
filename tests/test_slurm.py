"""SLURM for real, no mocks: a sweep as an sbatch array job (cnnjax.tools.sweep --slurm), and
two-task training under `srun -n 2` with jax.distributed initialised from SLURM's variables.

The cluster tests need a running cluster (`.ci/slurm_up.sh` starts a one-node one; CI runs
it first) and skip, saying why, without one. The sbatch script, the array indices and the
argument checks are tested without a cluster.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from cnnjax.runtime import distributed
from cnnjax.tools import sweep, sweep_slurm
from tests.conftest import ROOT, run_cli
from tests.multiprocess_check import check_two_match_one

EXAMPLE = "experiments/example_sweep/sweep.py"
CONFIG = f"{ROOT}/configs/resnet20_cifar.py:digits,smoke"
UP_STATES = {"idle", "mixed", "allocated", "completing"}  # 'idle*': not responding
TASK = ["--cpus-per-task=1", "--mem=2G", "--time=0:10:00"]  # fits any node slurm_up makes


def cluster_down() -> str:
    """'' if sbatch, srun and squeue are here and a node is up, else why not."""
    missing = [b for b in ("sinfo", "sbatch", "srun", "squeue") if shutil.which(b) is None]
    if missing:
        return f"{', '.join(missing)} not on PATH"
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                              timeout=30)  # fmt: skip
    except subprocess.TimeoutExpired:
        return "sinfo timed out"
    if proc.returncode != 0:
        return f"sinfo failed: {' '.join(proc.stderr.split())}"
    states = proc.stdout.split()
    return "" if UP_STATES & set(states) else f"no node up (sinfo: {', '.join(states) or 'none'})"


@pytest.fixture(scope="module")
def cluster():
    why = cluster_down()
    if why:
        pytest.skip(f"no SLURM cluster: {why} (.ci/slurm_up.sh starts one)")


@pytest.fixture
def cancel_after():
    """Job ids or names appended to it are scancel'ed after the test (a failed or timed-out
    test leaves nothing queued)."""
    jobs = []
    yield jobs
    for job in jobs:
        flag = [] if str(job).isdigit() else ["--name"]
        subprocess.run(["scancel", *flag, str(job)], capture_output=True)


# --- the script and the arguments, no cluster needed ----------------------------------


def test_sbatch_script_has_the_array_and_the_resources():
    assert sweep_slurm.array_spec([5, 0, 1, 2, 7, 8]) == "0-2,5,7-8"
    assert sweep_slurm.array_spec([3], max_running=2) == "3%2"
    res = sweep_slurm.Resources(cpus_per_task=2, mem="3G", time="0:30:00", max_running=2,
                                extra=("--partition=cpu", "--gpus-per-task=1"))  # fmt: skip
    script = sweep_slurm.sbatch_script("exp/sweep.py", "runs/sw", [0, 1, 3], res, cwd="/repo",
                                       python="/venv/python")  # fmt: skip
    options = re.findall(r"^#SBATCH (\S+)$", script, re.MULTILINE)
    assert options == [
        "--job-name=sweep-sw", "--array=0-1,3%2", "--ntasks=1", "--cpus-per-task=2",
        "--mem=3G", "--time=0:30:00", "--chdir=/repo", "--output=runs/sw/slurm-%A_%a.out",
        "--partition=cpu", "--gpus-per-task=1",
    ]  # fmt: skip
    assert script.startswith("#!/bin/bash\n")
    assert script.endswith(
        "\ncd /repo\nexec /venv/python -m cnnjax.tools.sweep exp/sweep.py --sweep_dir=runs/sw"
        ' --point-index="$SLURM_ARRAY_TASK_ID"\n'
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"cpus_per_task": 0}, "--cpus-per-task=0 must be at least 1"),
        ({"mem": "lots"}, "--mem='lots' is not a size"),
        ({"time": "1h"}, "--time='1h' is not a SLURM time"),
        ({"extra": ("partition=cpu",)}, "--slurm-arg='partition=cpu' is not one sbatch option"),
        ({"extra": ("--comment=a b",)}, "--slurm-arg='--comment=a b' is not one sbatch option"),
    ],
)
def test_bad_resources_are_sweep_errors(kwargs, message):
    with pytest.raises(sweep.SweepError, match=re.escape(message)):
        sweep_slurm.Resources(**kwargs)


def test_dry_run_prints_the_script_for_the_points_not_done(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "sw"
    points = sweep.load_sweep(EXAMPLE)
    done = points[1]  # as the trainer and the runner leave a finished point
    wd = sweep.workdir_of(done, out)
    wd.mkdir(parents=True)
    step = sweep.final_step(sweep.validate([done])[done.name], wd)
    (wd / "metrics.jsonl").write_text(json.dumps({"step": step, "split": "eval"}) + "\n")
    (wd / "sweep_status.json").write_text(json.dumps({"exit_code": 0, "state": "done"}))
    args = [EXAMPLE, f"--sweep_dir={out}", "--slurm", "--dry-run", *TASK, "--parallel=2"]
    assert sweep.main(args) == 0
    captured = capsys.readouterr()
    assert "#SBATCH --array=0,2-3%2\n" in captured.out  # point 1 is done
    for option in TASK:
        assert f"#SBATCH {option}\n" in captured.out
    assert f'--sweep_dir={out} --point-index="$SLURM_ARRAY_TASK_ID"' in captured.out
    assert "3 point(s) to submit; nothing submitted (--dry-run)" in captured.err
    assert sorted(p.name for p in out.iterdir()) == [done.name]  # nothing written


def test_missing_sbatch_and_slurm_options_without_slurm_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    assert sweep.main([EXAMPLE, f"--sweep_dir={tmp_path / 'sw'}", "--slurm"]) == 2
    err = capsys.readouterr().err
    assert err == "error: --slurm needs SLURM's sbatch, which is not on PATH\n"
    assert sweep.main([EXAMPLE, "--wait"]) == 2
    assert capsys.readouterr().err == "error: --wait needs --slurm\n"
    assert not (tmp_path / "sw").exists()


def test_one_task_per_node_drives_every_gpu_it_was_given():
    per_node = {"SLURM_NTASKS": "4", "SLURM_STEP_NUM_NODES": "4"}
    assert distributed.slurm_local_device_ids(per_node | {"CUDA_VISIBLE_DEVICES": "4,5,6,7"}) == [
        0, 1, 2, 3
    ]  # fmt: skip
    assert distributed.slurm_local_device_ids(per_node) is None  # CPUs: JAX's default
    per_gpu = {"SLURM_NTASKS": "8", "SLURM_NNODES": "1", "CUDA_VISIBLE_DEVICES": "0,1,2,3"}
    assert distributed.slurm_local_device_ids(per_gpu) is None  # JAX's one GPU per task
    assert distributed.slurm_local_device_ids({}) is None


# --- on the cluster -------------------------------------------------------------------


@pytest.mark.slow
def test_sweep_as_an_array_job_then_nothing_left(cluster, cancel_after, tmp_path):
    path, out = tmp_path / "sweep.py", tmp_path / "sw"
    path.write_text(
        f"from cnnjax.tools.sweep import Point\nCONFIG = {CONFIG!r}\n\n"
        "def get_sweep():\n    return [Point('a_s0', CONFIG), Point('a_s1', CONFIG, seed=1)]\n"
    )
    args = [str(path), f"--sweep_dir={out}", "--slurm", *TASK]
    try:
        proc = run_cli("cnnjax.tools.sweep", *args, "--wait", timeout=300)
    except subprocess.TimeoutExpired as e:
        cancel_after.extend(re.findall(r"submitted job (\d+)", (e.stdout or b"").decode()))
        raise
    log = proc.stdout + proc.stderr
    job = re.search(r"\[sweep\] submitted job (\d+): 2 point\(s\), array 0-1\n", log)
    assert job, log
    job = job.group(1)
    cancel_after.append(job)
    assert proc.returncode == 0, log
    assert f"[sweep] job {job}: 2/2 done" in log
    manifest = json.loads((out / "sweep.json").read_text())
    assert manifest["slurm"]["job_id"] == job and manifest["slurm"]["array"] == "0-1"
    assert [p["state"] for p in manifest["points"]] == ["done", "done"]  # both tasks' news
    configs = sweep.validate(sweep.load_sweep(path))
    task_jobs = set()
    for i, name in enumerate(("a_s0", "a_s1")):
        status = json.loads((out / name / "sweep_status.json").read_text())
        assert status["exit_code"] == 0 and status["state"] == "done", status
        task_jobs.add(status["slurm_job_id"])
        assert sweep.has_final_eval(out / name, sweep.final_step(configs[name], out / name))
        assert "[sweep] 1/1 done" in (out / f"slurm-{job}_{i}.out").read_text()
    assert len(task_jobs) == 2 and None not in task_jobs  # each point ran in its own task

    # Submitting again finds nothing to do and submits nothing.
    before = {n: (out / n / "train.log").stat().st_mtime_ns for n in ("a_s0", "a_s1")}
    again = run_cli("cnnjax.tools.sweep", *args, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "2 point(s) done: not submitted" in again.stdout
    assert "nothing to submit" in again.stdout and "submitted job" not in again.stdout
    assert {n: (out / n / "train.log").stat().st_mtime_ns for n in before} == before


@pytest.mark.slow
def test_two_srun_tasks_match_one_process(cluster, cancel_after, tmp_path):
    name = f"cnnjax-test-srun-{os.getpid()}"
    cancel_after.append(name)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    check = [sys.executable, "-m", "tests.multiprocess_check", str(tmp_path)]
    # jax.distributed.initialize() with no arguments: SLURM's variables (cnnjax.runtime.
    # distributed), the coordinator on the step's first node.
    srun = ["srun", "-n", "2", *TASK, "--kill-on-bad-exit=1", f"--job-name={name}"]
    two = subprocess.Popen([*srun, *check, "slurm"], cwd=ROOT, env=env, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    one = [*check, "0", "0", "1"]  # and the baseline: the first batch reversed
    runs = [subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
            for cmd in (one, [*one, "reversed"])]  # fmt: skip
    log = two.communicate(timeout=300)[0]
    for run in runs:
        assert run.returncode == 0, run.stderr[-2000:]
    assert two.returncode == 0, log[-3000:]
    check_two_match_one(tmp_path)  # 2 processes, 2 devices: as 1 within a reordering's move
