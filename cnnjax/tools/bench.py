"""Throughput benchmark: cnnjax against PyTorch on the same model, batch and resolution.

    ./launch.sh bench [--models=resnet20_cifar,resnet50] [--mode=train|eval|both]
                      [--batch=N] [--image_size=N] [--dtype=float32|bfloat16] [--json]

Every measurement (model x framework x mode) runs in its own subprocess so that peak RSS
and compile time belong to it alone. Data is synthetic and already on the device; the
`pipeline` rows measure the grain input pipeline's host stage on its own (digits and
CIFAR-shaped records) so it can be compared with what the model consumes; `./launch.sh
bench-input` measures the trainer's whole input path (host and device stages, train loop).
One JSON line per row: model, framework (cnnjax | torch_eager | torch_channels_last |
grain), mode, batch, image_size, dtype, img_per_s, step_ms, compile_s, peak_rss_mb, device.
"""

import dataclasses
import json
import os
import resource
import subprocess
import sys
import time

from absl import app, flags

from cnnjax.errors import EXIT_BAD_INPUT
from cnnjax.tools.timing import time_windows

DEFAULT_MODELS = (
    "resnet20_cifar,resnet56_cifar,resnet18,resnet50,vgg16,mobilenet_v2,efficientnet_b0"
)
FRAMEWORKS = ("cnnjax", "torch_eager", "torch_channels_last")
MODES = ("train", "eval")

FLAGS = flags.FLAGS
flags.DEFINE_string("models", DEFAULT_MODELS, "Comma-separated model names.")
flags.DEFINE_enum("mode", "both", ["train", "eval", "both"], "What to time.")
flags.DEFINE_integer("batch", 128, "Batch size.")
flags.DEFINE_integer("image_size", 0, "Resolution; 0 = 32 for *_cifar, 224 otherwise.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype (both sides).")
flags.DEFINE_string(
    "conv", "auto",
    "cnnjax conv implementation (train.conv): auto | onednn | xla. This and the next three "
    "take a comma-separated list for one cnnjax row per combination, side by side.",
)  # fmt: skip
flags.DEFINE_string(
    "materialize", "auto",
    "cnnjax recompute barrier (train.materialize): auto | on | off, e.g. on,off.",
)  # fmt: skip
flags.DEFINE_string(
    "depthwise", "auto", "cnnjax depthwise convolutions (train.depthwise): auto | shifted | xla."
)
flags.DEFINE_string(
    "ynn", "default",
    "XLA:CPU's --xla_cpu_experimental_ynn_fusion_type for the cnnjax rows: 'default' (the "
    "project's, cnnjax/runtime/xla_env.py), 'none' (no YNN fusions) or fusion types joined "
    "with '+' (e.g. reduce); a comma-separated list for one row each.",
)  # fmt: skip
flags.DEFINE_string(
    "malloc", "hugepages",
    "The cnnjax rows' malloc: 'hugepages' (transparent huge pages, cnnjax/runtime/malloc.py, "
    "the default) or 'glibc' (without; CNNJAX_NO_HUGEPAGES=1); e.g. hugepages,glibc.",
)  # fmt: skip
flags.DEFINE_string(
    "batch_norm", "auto",
    "cnnjax BatchNorm (train.batch_norm): auto | onednn | cnnjax | flax, e.g. onednn,cnnjax.",
)  # fmt: skip
flags.DEFINE_string("frameworks", ",".join(FRAMEWORKS), "Comma-separated subset to run.")
flags.DEFINE_integer("steps", 5, "Timed steps per window (after 2 warm-up steps).")
flags.DEFINE_integer("windows", 3, "Timed windows; the fastest is reported.")
flags.DEFINE_boolean("pipeline", True, "Also time the grain input pipeline.")
flags.DEFINE_integer("peak_n", 4096, "Size N of the peak matmul ([N, N] @ [N, N] float32).")
flags.DEFINE_boolean(
    "peak", True,
    "First time a large float32 matmul (the machine's attainable peak, XLA's dot) and give "
    "each model row its share of it (model flops per step: 2 x MACs x batch, x3 training).",
)  # fmt: skip
flags.DEFINE_boolean("json", False, "Print one JSON line per measurement instead of a table.")
flags.DEFINE_string("worker", None, "Internal: run one measurement given as JSON.")


# Recurrent models with a PyTorch twin (cnnjax.tools.bench_torch.RowSequenceClassifier);
# `cnn_lstm` has none (run it with --frameworks=cnnjax).
TORCH_SEQUENCE = ("rnn", "lstm", "gru")
SEQUENCE = (*TORCH_SEQUENCE, "cnn_lstm")


def _image_size(model: str, size: int) -> int:
    if size:
        return size
    if model in SEQUENCE:
        return 28  # row-wise MNIST: 28 steps of 28 pixels (x 3 channels here)
    return 32 if model.endswith("_cifar") else 224


def _num_classes(model: str) -> int:
    if _task_of(model) == "segmentation":
        return 21  # PASCAL VOC's classes, as torchvision's segmentation models
    return 10 if model.endswith("_cifar") or model in SEQUENCE else 1000


# cnnjax segmentation models and their torchvision twins (the same backbone, output stride,
# head; tests/test_deeplab.py checks equal logits on converted weights).
TORCH_SEGMENTATION = {"deeplabv3": "deeplabv3_resnet50", "fcn_resnet": "fcn_resnet50"}


def _task_of(model: str) -> str:
    from cnnjax.models.segmentation import MODELS

    return "segmentation" if model in MODELS else "classification"


def _synthetic_info(model: str, s: int):
    """A DataInfo for the bench's synthetic batches (3 channels)."""
    from cnnjax.data.sources import DataInfo, FeatureInfo

    k = _num_classes(model)
    if _task_of(model) == "segmentation":
        return DataInfo.synthetic((s, s, 3), None, segmentation=FeatureInfo((s, s), "uint8", k))
    return DataInfo.synthetic((s, s, 3), k)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def compiled_step(job: dict):
    """-> (compiled train or eval step, state, synthetic batch on the device, compile seconds)
    for a bench job (model, batch, image_size, dtype, conv, batch_norm, mode; task, default
    classification), set up as the trainer sets up its model and task; SGD with momentum.
    The batch is random data shaped by the task's feature spec. experiments/profile_step.py
    uses it too."""
    import functools

    import jax
    import ml_collections
    import optax

    from cnnjax import models, tasks
    from cnnjax.data.features import synthetic_batch
    from cnnjax.engine import step
    from cnnjax.engine.state import create_state
    from cnnjax.models import rewrite

    b, s = job["batch"], job["image_size"]
    task = tasks.create(_task_of(job["model"]), _synthetic_info(job["model"], s), image_size=s)
    # The trainer's own model set-up: compute dtype, conv and BatchNorm implementations.
    train_cfg = ml_collections.ConfigDict(
        {"compute_dtype": job["dtype"], "conv": job.get("conv", "auto"),
         "batch_norm": job.get("batch_norm", "auto"),
         "materialize": job.get("materialize", "auto"),
         "depthwise": job.get("depthwise", "auto")}
    )  # fmt: skip
    model = models.create(job["model"], **task.model_kwargs())
    model = rewrite.apply_to_model(model, train_cfg)
    batch = jax.device_put(synthetic_batch(task.features(), b, seed=0))
    tx = optax.sgd(0.01, momentum=0.9)
    init = lambda r: create_state(model, tx, r, task.init_inputs())
    state = jax.jit(init)(jax.random.key(0))
    if job["mode"] == "train":
        fn = jax.jit(functools.partial(step.train_step, task=task), donate_argnums=0)
    else:
        fn = jax.jit(functools.partial(step.eval_step, task=task))
    t = time.perf_counter()
    compiled = fn.lower(state, batch).compile()
    return compiled, state, batch, time.perf_counter() - t


def _cnnjax(job: dict) -> dict:
    import jax

    compiled, state, batch, compile_s = compiled_step(job)
    box = {"state": state, "out": None}

    def run_steps(n):
        for _ in range(n):
            if job["mode"] == "train":
                box["state"], box["out"] = compiled(box["state"], batch)
            else:
                box["out"] = compiled(box["state"], batch)

    sec = time_windows(run_steps, lambda: jax.block_until_ready(box["out"]), job["steps"],
                        job["windows"])  # fmt: skip
    return {"step_ms": sec * 1e3, "compile_s": compile_s, "device": jax.devices()[0].device_kind}


def _torch_model(name: str, num_classes: int, image_size: int = 224):
    import torchvision

    if name.endswith("_cifar"):
        from cnnjax.tools.bench_torch import cifar_resnet

        depth = int(name.removeprefix("resnet").removesuffix("_cifar"))
        return cifar_resnet(depth, num_classes)
    if name in TORCH_SEQUENCE:
        from cnnjax.tools.bench_torch import RowSequenceClassifier

        return RowSequenceClassifier(name, 3 * image_size, num_classes)
    if name in TORCH_SEGMENTATION:
        import torch

        class OutOnly(torch.nn.Module):
            """torchvision's segmentation models return {'out': logits}: unwrap them."""

            def __init__(self, model):
                super().__init__()
                self.model = model

            def forward(self, x):
                return self.model(x)["out"]

        build = getattr(torchvision.models.segmentation, TORCH_SEGMENTATION[name])
        kw = {"weights": None, "weights_backbone": None, "aux_loss": False}
        return OutOnly(build(num_classes=num_classes, **kw))
    return getattr(torchvision.models, name)(num_classes=num_classes)


def _torch(job: dict) -> dict:
    import torch

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    b, s, k = job["batch"], job["image_size"], _num_classes(job["model"])
    model = _torch_model(job["model"], k, s).to(dev)
    x = torch.randn(b, 3, s, s, device=dev)
    label_shape = (b, s, s) if _task_of(job["model"]) == "segmentation" else (b,)
    y = torch.randint(0, k, label_shape, device=dev)  # segmentation: per-pixel classes
    if job["framework"] == "torch_channels_last":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    train = job["mode"] == "train"
    model.train(train)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    amp = torch.autocast(dev, dtype=torch.bfloat16, enabled=job["dtype"] == "bfloat16")

    def run_steps(n):
        for _ in range(n):
            if train:
                with amp:
                    loss = torch.nn.functional.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            else:
                with torch.no_grad(), amp:
                    model(x)

    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    sec = time_windows(run_steps, sync, job["steps"], job["windows"])
    kind = torch.cuda.get_device_name() if dev == "cuda" else "cpu"
    return {"step_ms": sec * 1e3, "compile_s": 0.0, "device": kind}


def _pipeline(job: dict) -> dict:
    """Batches per second out of the grain train pipeline's host stage (2 threads); the
    augmentation runs on device since the input-path change (`bench_input` times both)."""
    from cnnjax.data import pipeline

    source, task = pipeline_source(job["model"])
    ds = pipeline.train_dataset(
        source, task.train_preprocess, task.features(), batch_size=job["batch"], seed=0
    )
    it = iter(ds)
    sec = time_windows(lambda n: [next(it) for _ in range(n)], lambda: None, job["steps"],
                        job["windows"])  # fmt: skip
    return {"step_ms": sec * 1e3, "compile_s": 0.0, "device": "cpu"}


def pipeline_source(name: str):
    """-> (source, classification task) for 'digits' (the embedded set, 32 px, crop
    padding 2) or 'cifar_shaped' (4,096 random 32x32x3 uint8 records, CIFAR-10's crop +
    flip augmentation)."""
    import numpy as np

    from cnnjax import tasks
    from cnnjax.config import base as configlib
    from cnnjax.data import open_sources
    from cnnjax.data.sources import DataInfo
    from cnnjax.data.transforms import Augment

    if name == "digits":
        source, _, info = open_sources(configlib.base_config().data)
        aug = Augment(crop_padding=2)
    else:
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (4096, 32, 32, 3), np.uint8)
        labels = rng.integers(0, 10, 4096)
        source = [{"image": images[i], "label": labels[i]} for i in range(len(images))]
        info = dataclasses.replace(
            DataInfo.synthetic((32, 32, 3), 10),
            name="cifar_shaped",
            num_train=len(source),
            mean=(0.4914, 0.4822, 0.4465),
            std=(0.2470, 0.2435, 0.2616),
        )
        aug = Augment(crop_padding=4, flip=True)
    return source, tasks.create("classification", info, image_size=32, augment=aug)


def _matmul_peak(job: dict) -> dict:
    """GFLOP/s of one large float32 matmul: the attainable peak here, the faster of XLA's dot
    and (when installed) PyTorch's (MKL / oneDNN sgemm)."""
    import jax
    import jax.numpy as jnp

    n = job["image_size"]
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    box = {}

    def go(k):
        for _ in range(k):
            box["c"] = dot(a, b)

    xla = time_windows(go, lambda: box["c"].block_until_ready(), job["steps"], job["windows"])
    rates = {"xla_gflop_per_s": 2 * n**3 / xla / 1e9}
    try:
        import numpy as np
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        ta, tb = torch.from_numpy(np.asarray(a)), torch.from_numpy(np.asarray(b))
        sec = time_windows(lambda k: [torch.mm(ta, tb) for _ in range(k)], lambda: None,
                           job["steps"], job["windows"])  # fmt: skip
        rates["torch_gflop_per_s"] = 2 * n**3 / sec / 1e9
    best = max(rates.values())
    return {"step_ms": 2 * n**3 / best / 1e6, "compile_s": 0.0,
            "device": jax.devices()[0].device_kind, "gflop_per_s": best, **rates}  # fmt: skip


def model_gflop(job: dict) -> float | None:
    """Arithmetic of one step (GFLOP): 2 x MACs per example x batch, x3 when training (the
    forward pass and its two gradients); None for a model the counter does not cover."""
    from cnnjax.analysis.arithmetic import analyze

    try:
        s = job["image_size"]
        macs = analyze(job["model"], (s, s, 3), num_classes=_num_classes(job["model"])).macs
    except Exception:  # noqa: BLE001 (a sequence model: no per-layer count, no share)
        return None
    return 2 * macs * job["batch"] * (3 if job["mode"] == "train" else 1) / 1e9


def run_worker(job: dict) -> dict:
    if job["framework"] == "matmul":
        return {**{k: job[k] for k in ("model", "framework", "mode", "batch", "image_size",
                                       "dtype")}, **_matmul_peak(job), "img_per_s": 0.0,
                "peak_rss_mb": _peak_rss_mb()}  # fmt: skip
    fn = {"cnnjax": _cnnjax, "grain": _pipeline}.get(job["framework"], _torch)
    result = fn(job)
    if job["framework"] != "grain":
        gflop = model_gflop(job)
        if gflop is not None:
            result["gflop_per_s"] = gflop / (result["step_ms"] / 1e3)
    extra = {k: job[k] for k in VARIANT_KEYS if k in job and job["framework"] == "cnnjax"}
    return {
        **{k: job[k] for k in ("model", "framework", "mode", "batch", "image_size", "dtype")},
        **extra,
        "img_per_s": job["batch"] / (result["step_ms"] / 1e3),
        **result,
        "peak_rss_mb": _peak_rss_mb(),
    }


# The cnnjax settings a bench run can sweep (one row per combination), with their defaults.
VARIANT_KEYS = ("conv", "materialize", "depthwise", "ynn", "batch_norm", "malloc")
VARIANT_DEFAULTS = {"conv": "auto", "materialize": "auto", "depthwise": "auto", "ynn": "default",
                    "batch_norm": "auto", "malloc": "hugepages"}  # fmt: skip
# malloc with transparent huge pages (cnnjax/runtime/malloc.py, the default) or glibc's plain
MALLOC_CHOICES = ("hugepages", "glibc")


def jobs(models, modes, frameworks, batch, image_size, dtype, conv, steps, windows, pipeline,
         batch_norm=("auto",), materialize=("auto",), depthwise=("auto",),
         ynn=("default",), malloc=("hugepages",)):  # fmt: skip
    """The measurements to run, in order. `conv`, `materialize`, `depthwise`, `ynn` and
    `batch_norm` are each a value or a tuple of values; the cnnjax rows are their product."""
    import itertools

    grid = [(v,) if isinstance(v, str) else tuple(v)
            for v in (conv, materialize, depthwise, ynn, batch_norm, malloc)]  # fmt: skip
    out = []
    base = {"batch": batch, "dtype": dtype, "steps": steps, "windows": windows}
    for m in models:
        size = _image_size(m, image_size)
        for mode in modes:
            for fw in frameworks:
                row = {**base, "model": m, "framework": fw, "mode": mode, "image_size": size}
                if fw != "cnnjax":
                    out.append(row)
                    continue
                for values in itertools.product(*grid):  # one cnnjax row per combination
                    out.append({**row, **dict(zip(VARIANT_KEYS, values, strict=True))})
    if pipeline:
        for name in ("digits", "cifar_shaped"):
            out.append({**base, "model": name, "framework": "grain", "mode": "pipeline",
                        "image_size": 32})  # fmt: skip
    return out


def _job_env(job: dict) -> dict:
    """The worker's environment: the job's YNN fusion setting in XLA_FLAGS (a user's own
    setting of that flag is replaced for the row that asks for another) and its malloc
    ('hugepages': cnnjax/runtime/malloc.py's tunable; 'glibc': without it)."""
    from cnnjax.runtime import malloc

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if job.get("malloc", "hugepages") == "glibc":
        env[malloc.DISABLE_ENV] = "1"
        tunables = [t for t in env.get("GLIBC_TUNABLES", "").split(":") if t != malloc.TUNABLE]
        env["GLIBC_TUNABLES"] = ":".join(tunables)
    else:
        env = malloc.hugepage_env(env)
    ynn = job.get("ynn", "default")
    if ynn == "default":
        return env
    name = "--xla_cpu_experimental_ynn_fusion_type"
    kept = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith(name + "=")]
    value = "" if ynn == "none" else ynn.replace("+", ",")
    env["XLA_FLAGS"] = " ".join([*kept, f"{name}={value}"])
    return env


def measure(job: dict, timeout: int = 3600) -> dict:
    """Runs one job in a fresh interpreter -> its result row (or an 'error' row)."""
    proc = subprocess.run(
        [sys.executable, "-m", "cnnjax.tools.bench", f"--worker={json.dumps(job)}"],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_job_env(job),
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        return {k: job[k] for k in ("model", "framework", "mode", "batch")} | {"error": tail[0]}
    return json.loads(lines[-1])


def format_row(r: dict) -> str:
    if "error" in r:
        return f"{r['model']:<16} {r['framework']:<20} {r['mode']:<8} error: {r['error']}"
    if r["framework"] == "matmul":
        each = ", ".join(f"{k.split('_')[0]} {v:.1f}" for k, v in r.items()
                         if k.endswith("_gflop_per_s"))  # fmt: skip
        n = r["image_size"]
        return f"fp32 peak: {n}x{n} matmul {r['gflop_per_s']:.1f} GFLOP/s ({each})"
    shown = [
        f"{k}={r[k]}" for k in VARIANT_KEYS if r.get(k, VARIANT_DEFAULTS[k]) != VARIANT_DEFAULTS[k]
    ]
    fw = r["framework"] + (f"[{','.join(shown)}]" if shown else "")
    return (
        f"{r['model']:<16} {fw:<20} {r['mode']:<8} {r['batch']:>5} "
        f"{r['image_size']:>4}px {r['img_per_s']:>9.1f} img/s {r['step_ms']:>9.1f} ms "
        f"compile {r['compile_s']:>6.1f}s rss {r['peak_rss_mb']:>7.0f} MB"
        + (f" {r['of_peak']:>6.1%} of peak" if "of_peak" in r else "")
    )


def _check_names(models: list[str], frameworks: list[str]) -> None:
    from cnnjax import models as registry
    from cnnjax.errors import ConfigError, unknown_name

    for m in models:
        if m not in registry.names():
            raise unknown_name("model", m, registry.names())
    for f in frameworks:
        if f not in FRAMEWORKS:
            raise ConfigError(f"unknown framework '{f}'; expected a subset of {list(FRAMEWORKS)}")
    if any(f != "cnnjax" for f in frameworks):
        import torchvision

        from cnnjax.models.segmentation import MODELS as SEGMENTATION

        for m in models:
            twin = (
                (m.endswith("_cifar") and m.startswith("resnet"))
                or m in TORCH_SEQUENCE
                or (m in TORCH_SEGMENTATION)
                or (m not in SEGMENTATION and m not in SEQUENCE and hasattr(torchvision.models, m))
            )
            if not twin:
                raise ConfigError(
                    f"model '{m}' has no PyTorch twin to benchmark against; run it with "
                    "--frameworks=cnnjax"
                )


def _valid_ynn(value: str) -> bool:
    import re

    return value in ("default", "none") or re.fullmatch(r"[a-z_]+(\+[a-z_]+)*", value) is not None


def main(argv):
    del argv
    if FLAGS.worker:
        print(json.dumps(run_worker(json.loads(FLAGS.worker))), flush=True)
        return
    from cnnjax.errors import ConfigError

    models = [m for m in FLAGS.models.split(",") if m]
    frameworks = [f for f in FLAGS.frameworks.split(",") if f]
    try:
        _check_names(models, frameworks)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    modes = MODES if FLAGS.mode == "both" else (FLAGS.mode,)
    from cnnjax.models.patch_conv import DEPTHWISE_CHOICES
    from cnnjax.models.rewrite import BATCH_NORM_CHOICES, CONV_CHOICES, MATERIALIZE_CHOICES

    variants = {}
    choices_of = (("conv", CONV_CHOICES), ("materialize", MATERIALIZE_CHOICES),
                  ("depthwise", DEPTHWISE_CHOICES), ("ynn", None),
                  ("batch_norm", BATCH_NORM_CHOICES), ("malloc", MALLOC_CHOICES))  # fmt: skip
    for key, choices in choices_of:
        text = getattr(FLAGS, key)
        values = tuple(v for v in text.split(",") if v)
        bad = [v for v in values if choices is not None and v not in choices]
        if key == "ynn":
            bad = [v for v in values if not _valid_ynn(v)]
        if bad or not values:
            allowed = list(choices) if choices else "'default', 'none' or types joined by '+'"
            print(f"error: --{key}={text!r}: each value must be one of {allowed}",
                  file=sys.stderr)  # fmt: skip
            sys.exit(EXIT_BAD_INPUT)
        variants[key] = values
    if not FLAGS.json:
        print(f"load average before: {os.getloadavg()}", flush=True)
    peak = None
    if FLAGS.peak:
        row = measure(
            {
                "model": "matmul",
                "framework": "matmul",
                "mode": "peak",
                "batch": 0,
                "image_size": FLAGS.peak_n,
                "dtype": "float32",
                "steps": 3,
                "windows": 3,
            }
        )
        peak = row.get("gflop_per_s")
        print(json.dumps(row) if FLAGS.json else format_row(row), flush=True)
    for job in jobs(models, modes, frameworks, FLAGS.batch, FLAGS.image_size, FLAGS.dtype,
                    variants["conv"], FLAGS.steps, FLAGS.windows, FLAGS.pipeline,
                    variants["batch_norm"], variants["materialize"], variants["depthwise"],
                    variants["ynn"], variants["malloc"]):  # fmt: skip
        row = measure(job)
        row["load_avg_1m"] = os.getloadavg()[0]
        if peak and row.get("gflop_per_s"):
            row["of_peak"] = row["gflop_per_s"] / peak
        print(json.dumps(row) if FLAGS.json else format_row(row), flush=True)


if __name__ == "__main__":
    import cnnjax  # noqa: F401  (sets XLA defaults before JAX starts)

    app.run(main)
