"""The report tool's list-valued metrics (profile plots) and --readme pasting, on hand-written
workdirs (tests/test_sweep.py covers the tables)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cnnjax.errors import ConfigError
from cnnjax.tools import report
from tests.conftest import ROOT


def _cli(cwd, *args):
    """python -m cnnjax.tools.report ARGS from `cwd` (relative sweep paths resolve there)."""
    return subprocess.run([sys.executable, "-m", "cnnjax.tools.report", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})  # fmt: skip


def _run(root, name, seed, grads, steps=4):
    """A finished classification workdir whose final eval logs `input_grad_norm`."""
    wd = root / name
    wd.mkdir(parents=True)
    config = {"task": {"name": "classification"}, "eval": {"best_metric": ""},
              "train": {"num_steps": steps, "num_epochs": 0, "seed": seed},
              "data": {"batch_size": 16}, "model": {"name": "toy"}}  # fmt: skip
    (wd / "config.json").write_text(json.dumps(config))
    early, key = [9.0] * len(grads), "input_grad_norm"
    rows = [{"step": steps, "split": "train", "loss": 0.5, "steps_per_sec": 2.0},
            {"step": 2, "split": "eval", "accuracy": 0.1, key: early},
            {"step": steps, "split": "eval", "accuracy": 0.9, key: grads}]  # fmt: skip
    (wd / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (wd / "train.log").write_text(" model    toy  1,234 parameters\n")
    (wd / "sweep_status.json").write_text(json.dumps({"exit_code": 0, "elapsed_s": 3.0}))


def _sweep(tmp_path):
    """An experiment folder (sweep.py + README.md) and its sweep dir with two groups."""
    exp = tmp_path / "experiments" / "study"
    exp.mkdir(parents=True)
    (exp / "sweep.py").write_text(
        "from cnnjax.tools.sweep import Point\n\n"
        "def get_sweep():\n"
        "    return [Point(f'{g}_s{s}', 'configs/x.py', seed=s)\n"
        "            for g in ('a', 'b') for s in (0, 1)]\n"
    )
    sweep_dir = tmp_path / "runs" / "sweeps" / "study"
    _run(sweep_dir, "a_s0", 0, [1e-6, 1e-3, 1.0])
    _run(sweep_dir, "a_s1", 1, [3e-6, 3e-3, 1.0])
    _run(sweep_dir, "b_s0", 0, [0.5, 0.6, 1.0])
    _run(sweep_dir, "b_s1", 1, [0.7, 0.8, 1.0])
    return exp, sweep_dir


def test_a_list_metric_gets_a_profile_of_its_final_values(tmp_path, monkeypatch):
    exp, sweep_dir = _sweep(tmp_path)
    monkeypatch.chdir(tmp_path)  # the default sweep dir is runs/sweeps/<experiment folder>
    captured = {}
    real = report.plot_profile

    def spy(groups, key, path):
        captured[key] = {g.name: [report.final_list(r, key) for r in g.done] for g in groups}
        return real(groups, key, path)

    monkeypatch.setattr(report, "plot_profile", spy)
    report.report(exp / "sweep.py")
    assert (sweep_dir / "profile_input_grad_norm.png").stat().st_size > 0
    # The final eval's lists (step 4), not the earlier ones (all 9.0).
    assert captured["input_grad_norm"]["a"] == [[1e-6, 1e-3, 1.0], [3e-6, 3e-3, 1.0]]
    assert not (sweep_dir / "eval_input_grad_norm.png").exists()  # lists are not curves


def test_readme_gets_the_table_and_figures_pasted_between_its_markers(tmp_path, monkeypatch):
    exp, sweep_dir = _sweep(tmp_path)
    monkeypatch.chdir(tmp_path)
    readme = exp / "README.md"
    readme.write_text(
        "# Study\n\nbefore\n<!-- report:start -->\nold table\n<!-- report:end -->\nafter\n"
    )
    proc = _cli(tmp_path, "experiments/study/sweep.py", "--readme")
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = readme.read_text()
    assert "old table" not in text and text.startswith("# Study\n\nbefore\n") and "after" in text
    block = text.split("<!-- report:start -->")[1].split("<!-- report:end -->")[0]
    assert proc.stdout.strip() in block  # the printed table, verbatim
    assert (
        "| a | 2/2 |" in block
        and "![profile_input_grad_norm](profile_input_grad_norm.png)" in block
    )
    for name in ("train_loss.png", "eval_accuracy.png", "profile_input_grad_norm.png"):
        assert (exp / name).stat().st_size > 0, name
    # Twice: the same README (the block is replaced, not appended).
    assert _cli(tmp_path, "experiments/study/sweep.py", "--readme").returncode == 0
    assert readme.read_text().count("<!-- report:start -->") == 1


def test_readme_without_markers_or_without_a_sweep_file_is_an_error(tmp_path, monkeypatch):
    exp, sweep_dir = _sweep(tmp_path)
    monkeypatch.chdir(tmp_path)
    (exp / "README.md").write_text("# Study\n")
    with pytest.raises(ConfigError, match="has no <!-- report:start -->"):
        report.report(exp / "sweep.py", readme=True)
    with pytest.raises(ConfigError, match="needs the sweep.py"):
        report.report(sweep_dir, readme=True)


def test_python_dash_m_cnnjax_report_is_the_report_cli(tmp_path, monkeypatch):
    exp, sweep_dir = _sweep(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "cnnjax.report", str(sweep_dir)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| a | 2/2 |" in proc.stdout and (sweep_dir / "report.csv").exists()


def test_metrics_limits_the_table_and_figures_to_the_chosen_eval_metrics(tmp_path, monkeypatch):
    exp, sweep_dir = _sweep(tmp_path)
    for wd in sweep_dir.iterdir():  # a second scalar eval metric next to accuracy
        rows = [json.loads(line) for line in (wd / "metrics.jsonl").read_text().splitlines()]
        for r in rows:
            if r["split"] == "eval":
                r["loss"] = 1.0 - r["accuracy"]
        (wd / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.chdir(tmp_path)
    full = report.report(exp / "sweep.py")
    assert "loss final" in full and (sweep_dir / "eval_loss.png").exists()
    (sweep_dir / "eval_loss.png").unlink()
    only = report.report(exp / "sweep.py", metrics=("nothing_else",))
    assert "accuracy final" in only and "| loss final" not in only  # the best metric stays
    assert not (sweep_dir / "eval_loss.png").exists()


def _fake_point(d, rows, exit_code, num_steps=30):
    """A point workdir as the sweep leaves it: config.json, sweep_status.json, metrics.jsonl."""
    d.mkdir()
    (d / "config.json").write_text(
        json.dumps({"train": {"seed": 0, "num_steps": num_steps, "num_epochs": 0}})
    )
    (d / "sweep_status.json").write_text(json.dumps({"exit_code": exit_code, "pid": 0}))
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _load_script(path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plain_vs_residual_depth_figure_reads_finished_points(tmp_path, capsys):
    """experiments/plain_vs_residual/depth_figure.py: train error from the last logged train
    rows, test error from the final eval, a failed point left out."""
    fig = _load_script("experiments/plain_vs_residual/depth_figure.py")
    for name, train_acc, eval_acc, code in (
        ("plain20_s0", (0.5, 0.9, 0.8), 0.85, 0),
        ("resnet20_s0", (0.9, 1.0, 1.0), 0.97, 0),
        ("plain56_s0", (0.1, 0.2, 0.3), 0.25, 1),  # failed: not in the figure
    ):
        rows = [{"step": 10 * (i + 1), "split": "train", "accuracy": a}
                for i, a in enumerate(train_acc)]  # fmt: skip
        rows += [{"step": 5, "split": "eval", "accuracy": 0.1},
                 {"step": 30, "split": "eval", "accuracy": eval_acc}]  # fmt: skip
        _fake_point(tmp_path / name, rows, code)
    out = tmp_path / "fig.png"
    assert fig.main([f"--sweep_dir={tmp_path}", f"--out={out}", "--last=2"]) == 0
    printed = capsys.readouterr().out
    assert "| plain | 20 | 1 | 15.00% | 15.00% |" in printed  # 1 - (0.9 + 0.8) / 2; 1 - 0.85
    assert "| resnet | 20 | 1 | 0.00% | 3.00% |" in printed
    assert "56" not in printed.split("wrote")[0] and out.stat().st_size > 1000
    assert fig.main([f"--sweep_dir={tmp_path / 'none'}", f"--out={out}"]) == 2


def test_activations_layer_figure_orders_convolutions_input_to_output(tmp_path, capsys):
    """experiments/activations/layer_figure.py: the convolutions' gradient norms in network
    order (stem, then stage / block / conv), at the diagnostics step nearest --step."""
    fig = _load_script("experiments/activations/layer_figure.py")
    norms = {"grad_norm/layer2_0/conv1": 3.0, "grad_norm/layer1_1/conv2": 2.5,
             "grad_norm/conv1": 8.0, "grad_norm/layer1_0/conv1": 4.0, "grad_norm/fc": 1.0,
             "grad_norm/layer1_0/bn1": 9.0, "grad_norm/layer10_0/conv1": 0.5}  # fmt: skip
    rows = [{"step": 100, "split": "diagnostics", **norms},
            {"step": 400, "split": "diagnostics", **{k: 1.0 for k in norms}},
            {"step": 100, "split": "train", "loss": 1.0}]  # fmt: skip
    _fake_point(tmp_path / "tanh_s0", rows, None)  # still running: its diagnostics so far count
    (run,) = report.collect(tmp_path)
    assert fig.layer_norms(run, 120) == (100, [8.0, 4.0, 2.5, 3.0, 0.5])
    assert fig.layer_norms(run, 300)[0] == 400
    out = tmp_path / "fig.png"
    assert fig.main([f"--sweep_dir={tmp_path}", f"--out={out}", "--step=100"]) == 0
    assert "| tanh_s0 | 100 | 5 | 8 | 0.5 | 16 |" in capsys.readouterr().out
    assert out.stat().st_size > 1000


def test_kernel_arithmetic_reads_the_sweeps_own_points():
    """experiments/kernel_3x3_vs_5x5/arithmetic.py: one row per variant, built from the sweep's
    model.kwargs / image size overrides, counted by cnnjax.analysis."""
    arith = _load_script("experiments/kernel_3x3_vs_5x5/arithmetic.py")
    rows = arith.rows(ROOT / "experiments/kernel_3x3_vs_5x5/sweep.py")
    by = {r["variant"]: r for r in rows}
    assert list(by) == ["3x3x2", "5x5", "3x3x3", "7x7"] and by["5x5"]["size"] == 16
    # ResNet-20 on the 1-channel digits: the paper's 269,722 less 2 x 144 stem weights, as the
    # trainer's own count in the runs' train.log
    assert by["3x3x2"]["params"] == 269_434 and by["3x3x2"]["channels"] == 1
    assert by["5x5"]["convs"] == 10 and by["3x3x3"]["convs"] == 28 and by["3x3x2"]["convs"] == 19
    # two 3x3 (18 C^2) < one 5x5 (25 C^2); three 3x3 (27 C^2) < one 7x7 (49 C^2)
    assert by["3x3x2"]["params"] < by["5x5"]["params"] and by["3x3x3"]["macs"] < by["7x7"]["macs"]
    assert "| 7x7 | `kernels=(7,)` | 10 |" in arith.markdown(rows)


def test_batchnorm_activation_scale_shrinks_without_batch_norm():
    scale = _load_script("experiments/batchnorm/activation_scale.py")
    rows = {(r["model"], r["batch_norm"]): r for r in scale.rows()}
    for depth in ("plain20_cifar", "plain44_cifar"):
        assert 0.3 < rows[(depth, True)]["stage3"] < 1.0  # re-normalised at every layer
        assert rows[(depth, False)]["stage3"] < 1e-3  # LeCun init: ~2x less variance per ReLU
    assert rows[("plain44_cifar", False)]["logits"] < rows[("plain20_cifar", False)]["logits"]


def test_transfer_size_figure_reads_sizes_from_each_run(tmp_path, capsys):
    """experiments/transfer/size_figure.py: the training-set size from each run's
    dataset_info.json, the final eval accuracy, means over seeds, a failed point left out."""
    fig = _load_script("experiments/transfer/size_figure.py")
    for name, images, acc, code in (
        ("scratch_5pct_s0", 36, 0.5, 0),
        ("scratch_5pct_s1", 36, 0.7, 0),
        ("finetune_5pct_s0", 36, 0.9, 0),
        ("probe_all_s0", 715, 0.2, 1),  # failed: not in the figure
    ):
        rows = [{"step": 5, "split": "eval", "accuracy": 0.1},
                {"step": 30, "split": "eval", "accuracy": acc}]  # fmt: skip
        _fake_point(tmp_path / name, rows, code)
        (tmp_path / name / "dataset_info.json").write_text(json.dumps({"num_train": images}))
    out = tmp_path / "fig.png"
    assert fig.main([f"--sweep_dir={tmp_path}", f"--out={out}"]) == 0
    printed = capsys.readouterr().out
    assert "| scratch | 36 | 2 | 60.00% | 50.0%, 70.0% |" in printed
    assert "| finetune | 36 | 1 | 90.00% | 90.0% |" in printed
    assert "probe" not in printed and out.stat().st_size > 1000
    assert fig.main([f"--sweep_dir={tmp_path / 'none'}", f"--out={out}"]) == 2
