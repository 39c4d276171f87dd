"""`python -m cnnjax.tools.bench` smoke: one small model, one step, JSON rows for both frameworks
and for the grain input pipeline; bad names exit 2."""

import json

import pytest

from tests.conftest import run_cli

KEYS = {"model", "framework", "mode", "batch", "image_size", "img_per_s", "compile_s",
        "peak_rss_mb", "step_ms", "device", "dtype"}  # fmt: skip


def test_bench_json_rows_for_cnnjax_with_and_without_the_barrier_and_torch():
    proc = run_cli("cnnjax.tools.bench", "--models=resnet20_cifar", "--mode=train", "--batch=4",
                   "--image_size=16", "--steps=1", "--windows=1", "--materialize=on,off",
                   "--frameworks=cnnjax,torch_channels_last", "--nopipeline", "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [(r["framework"], r.get("materialize")) for r in rows] == [
        ("cnnjax", "on"), ("cnnjax", "off"), ("torch_channels_last", None)
    ]  # fmt: skip
    for r in rows:
        assert "error" not in r, r
        assert set(r) >= KEYS, r
        assert r["batch"] == 4 and r["img_per_s"] > 0 and r["peak_rss_mb"] > 50
    assert rows[0]["model"] == "resnet20_cifar" and rows[0]["image_size"] == 16
    assert rows[0]["compile_s"] > 0  # the jitted step was compiled ahead of timing


@pytest.mark.zoo_full  # two more interpreters (~25 s): CI's second stage
def test_bench_pipeline_rows():
    proc = run_cli("cnnjax.tools.bench", "--models=resnet20_cifar", "--mode=train", "--batch=4",
                   "--steps=1", "--windows=1", "--frameworks=", "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [(r["framework"], r["model"]) for r in rows] == [
        ("grain", "digits"), ("grain", "cifar_shaped")
    ]  # fmt: skip
    assert all(r["img_per_s"] > 0 and "error" not in r for r in rows), rows


def test_bench_bad_materialize_value_exits_2():
    proc = run_cli("cnnjax.tools.bench", "--models=resnet20_cifar", "--materialize=on,maybe")
    assert proc.returncode == 2
    assert "--materialize='on,maybe'" in proc.stderr and "'auto', 'on', 'off'" in proc.stderr


def test_bench_bad_model_exits_2():
    proc = run_cli("cnnjax.tools.bench", "--models=resnet21", "--json")
    assert proc.returncode == 2
    assert "unknown model 'resnet21'" in proc.stderr


def test_bench_an_lstm_against_its_torch_twin():
    proc = run_cli("cnnjax.tools.bench", "--models=lstm", "--mode=train", "--batch=4",
                   "--steps=1", "--windows=1", "--frameworks=cnnjax,torch_eager", "--nopipeline",
                   "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [r["framework"] for r in rows] == ["cnnjax", "torch_eager"]
    for r in rows:
        assert "error" not in r, r
        assert r["image_size"] == 28 and r["img_per_s"] > 0  # row-wise MNIST's 28 steps


def test_bench_a_model_without_a_torch_twin_says_so():
    proc = run_cli("cnnjax.tools.bench", "--models=cnn_lstm", "--frameworks=cnnjax,torch_eager")
    assert proc.returncode == 2
    assert "model 'cnn_lstm' has no PyTorch twin" in proc.stderr
    assert "--frameworks=cnnjax" in proc.stderr


@pytest.mark.zoo_full  # two detectors compiled (~40 s): CI's second stage
def test_detection_bench_rows_for_cnnjax_and_torchvision():
    pytest.importorskip("torchvision")
    proc = run_cli("cnnjax.tools.bench_detection", "--image_size=32", "--batch=2", "--steps=1",
                   "--windows=1", "--json", timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [r["mode"] for r in rows] == ["train", "infer"]
    assert all(r["cnnjax_img_s"] > 0 and r["torchvision_img_s"] > 0 for r in rows)
