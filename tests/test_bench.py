"""`python -m cnnjax.tools.bench` smoke: one small model, one step, JSON rows for both frameworks
and for the grain input pipeline; bad names exit 2."""

import json
import os

import pytest

from tests.conftest import run_cli

KEYS = {"model", "framework", "mode", "batch", "image_size", "img_per_s", "compile_s",
        "peak_rss_mb", "step_ms", "device", "dtype"}  # fmt: skip


def test_bench_json_rows_for_cnnjax_with_and_without_the_barrier_and_torch():
    proc = run_cli("cnnjax.tools.bench", "--models=resnet20_cifar", "--mode=train", "--batch=4",
                   "--image_size=16", "--steps=1", "--windows=1", "--materialize=on,off",
                   "--frameworks=cnnjax,torch_channels_last", "--nopipeline", "--json",
                   "--peak_n=256")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [(r["framework"], r.get("materialize")) for r in rows] == [
        ("matmul", None), ("cnnjax", "on"), ("cnnjax", "off"), ("torch_channels_last", None)
    ]  # fmt: skip
    peak, rows = rows[0], rows[1:]
    # the fp32 peak: the faster of XLA's and PyTorch's matmul; each model row's share of it
    assert peak["image_size"] == 256 and peak["gflop_per_s"] == max(
        peak["xla_gflop_per_s"], peak["torch_gflop_per_s"]
    )
    from cnnjax.analysis.arithmetic import analyze

    macs = analyze("resnet20_cifar", (16, 16, 3), num_classes=10).macs
    for r in rows:
        flop = 2 * 3 * 4 * macs  # a training step: forward and two gradients, batch 4
        assert r["gflop_per_s"] == pytest.approx(flop / r["step_ms"] / 1e6, rel=0.05), r
        assert r["of_peak"] == pytest.approx(r["gflop_per_s"] / peak["gflop_per_s"])
    for r in rows:
        assert "error" not in r, r
        assert set(r) >= KEYS, r
        assert r["batch"] == 4 and r["img_per_s"] > 0 and r["peak_rss_mb"] > 50
    assert rows[0]["model"] == "resnet20_cifar" and rows[0]["image_size"] == 16
    assert rows[0]["compile_s"] > 0  # the jitted step was compiled ahead of timing


@pytest.mark.zoo_full  # two more interpreters (~25 s): CI's second stage
def test_bench_pipeline_rows():
    proc = run_cli("cnnjax.tools.bench", "--models=resnet20_cifar", "--mode=train", "--batch=4",
                   "--steps=1", "--windows=1", "--frameworks=", "--json", "--nopeak")  # fmt: skip
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
                   "--json", "--nopeak")  # fmt: skip
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


def test_cnnjax_rows_are_the_product_of_the_swept_settings_and_ynn_reaches_xla_flags():
    from cnnjax.tools import bench

    rows = bench.jobs(["mobilenet_v2"], ["train"], ["cnnjax", "torch_eager"], 4, 0, "float32",
                      ("onednn", "xla"), 1, 1, False, materialize=("on",),
                      depthwise=("shifted", "xla"), ynn=("default", "reduce"))  # fmt: skip
    cnnjax_rows = [r for r in rows if r["framework"] == "cnnjax"]
    assert len(cnnjax_rows) == 8 and len(rows) == 9
    assert {(r["conv"], r["depthwise"], r["ynn"]) for r in cnnjax_rows} == {
        (c, d, y)
        for c in ("onednn", "xla")
        for d in ("shifted", "xla")
        for y in ("default", "reduce")
    }
    assert "conv" not in rows[-1] and rows[-1]["framework"] == "torch_eager"
    flag = "--xla_cpu_experimental_ynn_fusion_type"
    env = bench._job_env({"ynn": "reduce+dot"})
    assert f"{flag}=reduce,dot" in env["XLA_FLAGS"].split()
    assert env["XLA_FLAGS"].count(flag) == 1
    assert f"{flag}=" in bench._job_env({"ynn": "none"})["XLA_FLAGS"].split()
    assert bench._job_env({"ynn": "default"}).get("XLA_FLAGS") == os.environ.get("XLA_FLAGS")
    shown = bench.format_row({**cnnjax_rows[1], "img_per_s": 1.0, "step_ms": 1.0,
                              "compile_s": 1.0, "peak_rss_mb": 1.0})  # fmt: skip
    assert "cnnjax[conv=onednn,materialize=on,depthwise=shifted,ynn=reduce]" in shown


@pytest.mark.parametrize(
    "arg,allowed",
    [("--depthwise=fast", "'auto', 'shifted', 'xla'"), ("--ynn=Reduce!", "'default', 'none'"),
     ("--conv=winograd", "'auto', 'xla', 'onednn'")],
)  # fmt: skip
def test_bench_bad_variant_values_exit_2(arg, allowed):
    proc = run_cli("cnnjax.tools.bench", "--models=resnet20_cifar", arg)
    assert proc.returncode == 2
    assert arg.split("=")[0] in proc.stderr and allowed in proc.stderr


def test_bench_depthwise_times_each_part_four_ways():
    proc = run_cli("cnnjax.tools.bench_depthwise", "--layers=2x8x8x4:3:2", "--steps=1",
                   "--windows=1", "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    impls = ["xla grouped conv", "cnnjax shifted", "torch NCHW", "torch channels_last"]
    parts = ["forward", "input grad", "weight grad", "train"]
    assert [(r["impl"], r["part"]) for r in rows] == [(i, p) for i in impls for p in parts]
    assert all(r["ms"] > 0 and r["layer"] == "2x8x8x4:3:2" for r in rows)
    bad = run_cli("cnnjax.tools.bench_depthwise", "--layers=32x112x32:3")
    assert bad.returncode == 2 and "'32x112x32:3' is not BATCHxHxWxC:KERNEL:STRIDE" in bad.stderr


def test_bench_input_rows_and_summary():
    """The input-path bench on a smoke config: every row, the shapes each stage sees, the
    host profile (the task's own preprocess among the functions it names) and the summary's
    two ratios."""
    proc = run_cli(
        "cnnjax.tools.bench_input", "--config=configs/resnet20_cifar.py:digits,smoke",
        "--config.data.image_size=16", "--workers=0", "--steps=2", "--windows=1", "--profile=2",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    rows = ("host[", "device_stage ", "step ", "trainer_loop ")
    names = [ln.split()[0] for ln in lines if ln.startswith(rows)]
    assert names == ["host[workers=0]", "device_stage", "step", "trainer_loop"], proc.stdout
    assert "host (8, 8, 1) model_input (16, 16, 1)" in proc.stdout  # uint8 8x8 in, 16 px out
    profile = proc.stdout[proc.stdout.index("host stage profile") :].splitlines()
    assert profile[1].startswith("  by library: ") and "cnnjax " in profile[1], profile[1]
    profile = profile[3:-1]
    assert len(profile) == 15, proc.stdout
    shares = [float(ln.split("%")[0]) for ln in profile]
    assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 100.05
    assert any("preprocess (classification.py:" in ln for ln in profile), proc.stdout
    assert lines[-1].startswith("host pipeline / step: ") and "trainer loop / step: " in lines[-1]


@pytest.mark.parametrize("value", ["-1", "two", ""])
def test_bench_input_bad_workers_exit_2(value):
    proc = run_cli("cnnjax.tools.bench_input", f"--workers={value}")
    assert proc.returncode == 2, proc.stderr
    assert f"--workers={value!r}: expected worker counts >= 0" in proc.stderr
