"""Sweeps (cnnjax.tools.sweep) and their reports (cnnjax.tools.report).

Real runs use experiments/example_sweep/sweep.py (2 learning rates x 2 seeds of the ResNet-20
digits smoke config, 4 steps); the report's arithmetic is checked on hand-written workdirs.
"""

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cnnjax.tools import report, sweep
from tests.conftest import ROOT, run_cli

EXAMPLE = "experiments/example_sweep/sweep.py"
CONFIG = f"{ROOT}/configs/resnet20_cifar.py:digits,smoke"
NAMES = ["lr0.1_s0", "lr0.1_s1", "lr0.02_s0", "lr0.02_s1"]


def _write_sweep(path, body: str):
    path.write_text(f"from cnnjax.tools.sweep import Point\nCONFIG = {CONFIG!r}\n\n{body}")
    return path


def _status(sweep_dir, name) -> dict:
    return json.loads((sweep_dir / name / "sweep_status.json").read_text())


# --- pure parts -------------------------------------------------------------------------


def test_point_command_group_and_cpu_shares():
    p = sweep.Point("wide_s3", "configs/x.py:smoke", {"model.kwargs.width": 32}, seed=3)
    assert p.group == "wide" and p.overrides == ("model.kwargs.width=32",)
    assert sweep.Point("a_s1", "c.py", seed=2).group == "a_s1"  # the tail is not its seed
    assert sweep.train_command(p, "runs/sw", python="py") == [
        "py", "-m", "cnnjax.train", "--config=configs/x.py:smoke", "--workdir=runs/sw/wide_s3",
        "--config.train.seed=3", "--config.model.kwargs.width=32",
    ]  # fmt: skip
    assert sweep.cpu_slots(2, cpus=range(5)) == [[0, 1, 2], [3, 4]]
    assert sweep.cpu_slots(3, cpus=[4, 6]) == [[4], [6], [4]]
    assert sweep.eta([], 3, [], 2) is None
    assert sweep.eta([10.0, 20.0], 2, [5.0, 30.0], 2) == pytest.approx((2 * 15 + 10) / 2)


@pytest.mark.parametrize(
    "body, message",
    [
        ("def get_sweep():\n    return [Point('a', CONFIG), Point('a', CONFIG, seed=1)]\n",
         "duplicate point names: a"),
        ("POINTS = []\n", "defines no get_sweep()"),
        ("def get_sweep():\n    return [Point('a', CONFIG, {'optim.learnin_rate': 1.0})]\n",
         "point 'a': unknown config key 'optim.learnin_rate'. Did you mean 'optim.learning_rate'"),
        ("def get_sweep():\n    return [Point('a/b', CONFIG)]\n", "not filesystem-safe"),
        ("def get_sweep():\n    return [Point('a', CONFIG, ['train.seed=1'])]\n",
         "set the seed with Point(seed=...)"),
        ("def get_sweep():\n    return [1 / 0]\n", "line 5: ZeroDivisionError"),
    ],
    ids=["duplicate", "no_get_sweep", "bad_key", "bad_name", "seed_override", "raises"],
)  # fmt: skip
def test_bad_sweep_file_exits_2_naming_the_problem(tmp_path, capsys, body, message):
    path = _write_sweep(tmp_path / "sweep.py", body)
    assert sweep.main([str(path), f"--sweep_dir={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err
    assert not (tmp_path / "out").exists()


def test_dry_run_prints_one_command_per_point_and_runs_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "sw"
    proc = run_cli("cnnjax.tools.sweep", EXAMPLE, f"--sweep_dir={out}", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 4, proc.stdout
    for i, (line, name) in enumerate(zip(lines, NAMES, strict=True)):
        assert line.startswith(f"{i} {name} [{name[:-3]}]: ")
        assert "-m cnnjax.train --config=configs/resnet20_cifar.py:digits,smoke" in line
        assert f"--workdir={out / name} --config.train.seed={name[-1]}" in line
        assert f"--config.optim.learning_rate={name[2:-3]}" in line
    assert not out.exists()
    assert sweep.main([EXAMPLE, "--dry-run", "--point-index=2"]) == 0
    one = capsys.readouterr().out
    assert one.startswith("2 lr0.02_s0 ") and len(one.splitlines()) == 1
    assert "--workdir=runs/sweeps/example_sweep/lr0.02_s0" in one
    assert sweep.main([EXAMPLE, "--dry-run", "--point-index=4"]) == 2
    assert "--point-index=4 is not in 0..3" in capsys.readouterr().err


def test_default_sweep_dir_names_a_stage_file_after_its_folder_and_stem():
    assert sweep.default_sweep_dir("experiments/transfer/sweep.py") == Path("runs/sweeps/transfer")
    assert sweep.default_sweep_dir("experiments/transfer/pretrain.py") == Path(
        "runs/sweeps/transfer_pretrain"
    )


# --- real runs --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def example_sweep(tmp_path_factory):
    """The example sweep run once with --parallel 2 -> (sweep dir, exit code, stdout)."""
    out = tmp_path_factory.mktemp("sweep") / "example"
    proc = run_cli("cnnjax.tools.sweep", EXAMPLE, f"--sweep_dir={out}", "--parallel", "2")
    return out, proc.returncode, proc.stdout + proc.stderr


def test_sweep_runs_every_point_two_at_a_time_then_skips_them(example_sweep):
    out, code, log = example_sweep
    assert code == 0, log
    assert "[sweep] 4/4 done" in log
    statuses = [_status(out, n) for n in NAMES]
    assert all(s["state"] == "done" and s["exit_code"] == 0 for s in statuses), statuses
    first, second = statuses[:2]  # started together, each on its own share of the CPUs
    assert first["started"] < second["finished"] and second["started"] < first["finished"]
    if len(os.sched_getaffinity(0)) >= 2:
        assert not set(first["cpus"]) & set(second["cpus"])
    manifest = json.loads((out / "sweep.json").read_text())
    assert [p["name"] for p in manifest["points"]] == NAMES
    assert {p["state"] for p in manifest["points"]} == {"done"}
    assert manifest["points"][3]["overrides"] == ["optim.learning_rate=0.02"]
    train_log = (out / "lr0.1_s0" / "train.log").read_text()
    assert "resnet20_cifar  269,434 parameters" in train_log

    # A second invocation runs nothing.
    before = {n: (out / n / "train.log").stat().st_mtime_ns for n in NAMES}
    proc = run_cli("cnnjax.tools.sweep", EXAMPLE, f"--sweep_dir={out}", "--parallel=2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "4 point(s) done before: skipped" in proc.stdout and "start" not in proc.stdout
    assert {n: (out / n / "train.log").stat().st_mtime_ns for n in NAMES} == before
    assert [_status(out, n)["attempts"] for n in NAMES] == [1, 1, 1, 1]

    table = report.report(out)  # the real logs: parameters from train.log, both seeds in
    for group in ("lr0.1", "lr0.02"):
        cells = _cells(table, group)
        assert cells["runs"] == "2/2" and cells["params"] == "269,434", table
        assert " ± " in cells["accuracy final ↑"]


def test_interrupted_point_is_resumed(example_sweep, tmp_path):
    src, code, _ = example_sweep
    assert code == 0
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    wd = out / "lr0.1_s1"  # as if killed after the step-2 checkpoint, before the end
    rows = [json.loads(r) for r in (wd / "metrics.jsonl").read_text().splitlines()]
    kept = [json.dumps(r) for r in rows if r["step"] <= 2]
    (wd / "metrics.jsonl").write_text("\n".join(kept) + "\n")
    shutil.rmtree(wd / "checkpoints" / "4")
    status = _status(out, "lr0.1_s1") | {"exit_code": 75, "state": "interrupted"}
    (wd / "sweep_status.json").write_text(json.dumps(status))
    assert sweep.point_state(wd, 4) == "interrupted"
    # As a SLURM array task would: this point alone.
    proc = run_cli("cnnjax.tools.sweep", EXAMPLE, f"--sweep_dir={out}", "--point-index=1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "start lr0.1_s1 (attempt 2" in proc.stdout and "[sweep] 1/1 done" in proc.stdout
    assert "resuming at 2" in (wd / "train.log").read_text()
    assert _status(out, "lr0.1_s1")["state"] == "done"
    assert [_status(out, n)["attempts"] for n in NAMES] == [1, 2, 1, 1]
    manifest = json.loads((out / "sweep.json").read_text())
    assert [p["state"] for p in manifest["points"]] == ["done"] * 4


def test_failing_point_exits_1_and_the_others_still_run(tmp_path, monkeypatch, capsys):
    body = (
        "def get_sweep():\n"
        "    nan = {'optim.learning_rate': 1e30, 'train.nan_policy': 'stop'}\n"
        "    return [Point('diverge', CONFIG, nan), Point('fine', CONFIG, seed=5)]\n"
    )
    path = _write_sweep(tmp_path / "sweep.py", body)
    monkeypatch.chdir(tmp_path)  # config paths are absolute here; any directory works
    out = tmp_path / "sw"
    assert sweep.main([str(path), f"--sweep_dir={out}", "--parallel=1"]) == 1
    text = capsys.readouterr().out
    assert "failed diverge: exit 3" in text and "done fine: exit 0" in text
    assert f"--- diverge failed; the end of {out / 'diverge' / 'train.log'}:" in text
    assert "error: non-finite loss" in text  # the log's tail
    assert "[sweep] 1/2 done, 1 failed" in text
    assert _status(out, "diverge")["exit_code"] == 3 and _status(out, "fine")["state"] == "done"
    assert "- `diverge` (diverge, seed 0): failed, exit 3" in report.report(out)


def test_sigterm_stops_the_sweep_and_its_runs(tmp_path):
    body = "def get_sweep():\n    return [Point('first', CONFIG), Point('second', CONFIG)]\n"
    path, out = _write_sweep(tmp_path / "sweep.py", body), tmp_path / "sw"
    cmd = [sys.executable, "-m", "cnnjax.tools.sweep", str(path), f"--sweep_dir={out}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while not (out / "first" / "sweep_status.json").exists() and time.time() < deadline:
        time.sleep(0.05)  # until the first run has started
    proc.send_signal(signal.SIGTERM)
    stdout = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 75, stdout
    assert "rerun the same command to resume" in stdout
    status = _status(out, "first")
    assert status["state"] == "interrupted" and status["exit_code"] in (75, -signal.SIGTERM)
    with pytest.raises(ProcessLookupError):  # the sweep waited for it
        os.kill(status["pid"], 0)
    assert not (out / "second").exists()  # never started
    states = {p["name"]: p["state"] for p in json.loads((out / "sweep.json").read_text())["points"]}
    assert states == {"first": "interrupted", "second": "pending"}


# --- the report ---------------------------------------------------------------------------


def _fake_run(root, name, seed, evals, train_losses, best_metric="", status=None, steps=4):
    """A workdir as the trainer leaves it: config.json, metrics.jsonl, train.log."""
    wd = root / name
    wd.mkdir(parents=True)
    config = {"task": {"name": "classification"}, "eval": {"best_metric": best_metric},
              "train": {"num_steps": steps, "num_epochs": 0, "seed": seed},
              "data": {"batch_size": 16}, "model": {"name": "toy"}}  # fmt: skip
    (wd / "config.json").write_text(json.dumps(config))
    rows = [{"step": 2 * (i + 1), "split": "train", "loss": v, "steps_per_sec": 2.0}
            for i, v in enumerate(train_losses)]  # fmt: skip
    rows += [{"step": step, "split": "eval", "accuracy": acc, "loss": loss, "num_examples": 64}
             for step, acc, loss in evals]  # fmt: skip
    (wd / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 9')
    (wd / "train.log").write_text(" model    toy  1,234 parameters\n")
    if status is not None:
        (wd / "sweep_status.json").write_text(json.dumps(status))


def _cells(table: str, group: str) -> dict:
    lines = [line.strip("|").split("|") for line in table.splitlines() if line.startswith("|")]
    head = [c.strip() for c in lines[0]]
    row = next(r for r in lines if r[0].strip() == group)
    return dict(zip(head, (c.strip() for c in row), strict=True))


def test_report_aggregates_finished_seeds_only(tmp_path):
    alive = {"exit_code": None, "pid": os.getpid(), "host": socket.gethostname()}
    # a_s0 was resumed: step 4 was evaluated twice and the later row (0.8) counts.
    _fake_run(tmp_path, "a_s0", 0, [(2, 0.5, 1.0), (4, 0.1, 9.0), (4, 0.8, 1.5)], [2.0, 1.2])
    _fake_run(tmp_path, "a_s1", 1, [(2, 0.9, 2.0), (4, 0.6, 0.5)], [2.0, 0.8], status={
        "exit_code": 0, "elapsed_s": 30.0})  # fmt: skip
    _fake_run(tmp_path, "a_s2", 2, [(2, 0.1, 5.0)], [3.0], status=alive)
    _fake_run(tmp_path, "b_s0", 0, [(2, 0.3, 1.1), (4, 0.4, 1.2)], [1.5, 1.4])
    _fake_run(tmp_path, "b_s1", 1, [], [9.0], status={"exit_code": 3})
    table = report.report(tmp_path)
    a, b = _cells(table, "a"), _cells(table, "b")
    assert a["runs"] == "2/3 (1 running)" and b["runs"] == "1/2 (1 failed)"
    assert a["accuracy final ↑"] == "0.7000 ± 0.1414"  # (0.8, 0.6), sample std
    assert a["accuracy best ↑"] == "0.8500 ± 0.0707"  # max per run: (0.8, 0.9)
    assert a["loss best ↓"] == "0.7500 ± 0.3536"  # min per run: (1.0, 0.5)
    assert a["loss final ↓"] == "1.0000 ± 0.7071"
    assert a["train loss final"] == "1.0000 ± 0.2828" and a["params"] == "1,234"
    assert a["wall time (s)"] == "16.00 ± 19.80"  # a_s0: 4 steps at 2/s; a_s1: its status
    assert b["accuracy final ↑"] == "0.4000" and b["accuracy best ↑"] == "0.4000"
    assert list(_cells(table, "a"))[2] == "accuracy final ↑"  # the task's best metric first
    assert "- `a_s2` (a, seed 2): running\n" in table
    assert "- `b_s1` (b, seed 1): failed, exit 3\n" in table
    assert "a_s0" not in table  # finished runs are only in the means
    for name in ("report.md", "train_loss.png", "eval_accuracy.png", "final_accuracy.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert (tmp_path / "eval_loss.png").exists()
    with open(tmp_path / "report.csv") as f:
        rows = {r["group"]: r for r in csv.DictReader(f)}
    assert rows["a"]["accuracy_final_n"] == "2" and rows["a"]["not_done"] == "a_s2:running"
    assert float(rows["a"]["accuracy_final_std"]) == pytest.approx(0.02**0.5)
    assert rows["b"]["runs_done"] == "1" and rows["b"]["best_metric"] == "accuracy"
    assert table in (tmp_path / "report.md").read_text()


def test_report_best_of_a_min_metric_and_the_cli(tmp_path):
    for seed, losses in ((0, (0.9, 0.4, 0.6)), (1, (0.8, 0.7, 0.2))):
        evals = [(2 * i + 2, 0.5, v) for i, v in enumerate(losses)]
        _fake_run(tmp_path / "sw", f"x_s{seed}", seed, evals, [1.0], best_metric="loss", steps=6)
    proc = run_cli("cnnjax.tools.report", str(tmp_path / "sw"), f"--out={tmp_path / 'out'}")
    assert proc.returncode == 0, proc.stderr
    x = _cells(proc.stdout, "x")
    assert list(x)[2:4] == ["loss final ↓", "loss best ↓"]  # eval.best_metric='loss' first
    assert x["loss best ↓"] == "0.3000 ± 0.1414"  # min per run: (0.4, 0.2)
    assert x["loss final ↓"] == "0.4000 ± 0.2828"  # (0.6, 0.2)
    assert (tmp_path / "out" / "final_loss.png").exists()
    missing = run_cli("cnnjax.tools.report", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_short_run_is_the_shared_ablation_schedule():
    from cnnjax.tools.sweep import short_run

    assert short_run(800) == {"data.image_size": 16, "train.num_steps": 800,
                              "train.log_every_steps": 25, "train.checkpoint_every_steps": 200,
                              "eval.every_steps": 100}  # fmt: skip
    assert short_run(1200, image_size=32)["eval.every_steps"] == 150
