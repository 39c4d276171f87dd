"""The trainer's own input path against what its model consumes, side by side in one run.

    ./launch.sh bench-input [--config=configs/resnet20_cifar.py:digits] [--config.x=y ...]
        [--workers=0,2] [--steps=20] [--windows=3] [--json] [--out=FILE] [--profile=BATCHES]

One process, one config, the trainer's own set-up (`cnnjax.engine.build`); rows in img/s:

- `host[workers=N]`: the train pipeline as the trainer builds it (grain: read, the task's
  per-example host preprocess, batch) with N grain worker processes (0: reader threads),
  alone; `per_core` divides by the cores this process may use;
- `device_stage`: the task's `device_preprocess` (resize, augmentation, normalisation)
  jitted alone on a batch already on the device;
- `step`: the compiled train step (device stage included) on one batch kept on the device:
  what the model consumes (the synthetic-data rate);
- `trainer_loop`: the train loop's data path as the trainer runs it: host pipeline ->
  `DevicePrefetch` -> train step, at most two steps in flight; `input_ms` is the host time
  per step spent getting batches (on the loop's critical path), `wait_ms` the time spent
  waiting for the device.

`--profile=N` also runs the host stage's per-example work (record read, the task's
preprocess, the feature check; `pipeline.train_examples`) and the batching for N batches in
this thread under cProfile, and prints the functions that take the most of its own time,
with their share, per example.

The summary gives host / step (the headroom: the pipeline feeds this model `x` times over)
and trainer_loop / step (1.0: the model never waits for its input).
"""

import collections
import json
import os
import sys
import tempfile
import time

from absl import app, flags

from cnnjax.errors import EXIT_BAD_INPUT, ConfigError
from cnnjax.tools.timing import time_windows

FLAGS = flags.FLAGS
flags.DEFINE_string("config", "configs/resnet20_cifar.py:digits", "Config file[:args].")
flags.DEFINE_string("workers", "0,2", "Comma-separated grain worker counts for host rows.")
flags.DEFINE_integer("steps", 20, "Batches (steps) per timed window.")
flags.DEFINE_integer("windows", 3, "Timed windows; the fastest is reported.")
flags.DEFINE_boolean("json", False, "One JSON line per row instead of a table.")
flags.DEFINE_string("out", "", "Also append the JSON rows to this file.")
flags.DEFINE_integer(
    "profile",
    0,
    "Also profile the host stage on this many batches in "
    "this thread (cProfile) and print where its time goes.",
)

CONFIG = None
WORKERS: list[int] = []


def worker_counts(text: str) -> list[int]:
    """'0,2' -> [0, 2]; ConfigError naming the flag unless non-negative integers."""
    try:
        counts = [int(w) for w in text.split(",") if w.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 0:
        raise ConfigError(f"--workers={text!r}: expected worker counts >= 0, e.g. 0,2")
    return counts


def parse_flags(argv):
    """absl flags plus the config's `--config.*` overrides (as the train CLI)."""
    global CONFIG, WORKERS
    try:
        from cnnjax.config import files

        rest, CONFIG = files.load_from_argv(argv, FLAGS)
        WORKERS = worker_counts(FLAGS.workers)
    except (flags.Error, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    return rest


def cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _row(name: str, batch: int, seconds: float, **extra) -> dict:
    return {"row": name, "batch": batch, "img_per_s": batch / seconds,
            "ms_per_batch": seconds * 1e3, **extra}  # fmt: skip


def host_row(run, workers: int, steps: int, windows: int) -> dict:
    from cnnjax.engine import trainer

    it = iter(trainer.train_batches(run, workers=workers))
    sec = time_windows(lambda n: [next(it) for _ in range(n)], lambda: None, steps, windows)
    b = run.config.data.batch_size
    return _row(f"host[workers={workers}]", b, sec, per_core=b / sec / cores(), cores=cores())


def device_stage_row(run, host_batch, steps: int, windows: int) -> dict:
    import jax

    from cnnjax.runtime import sharding

    batch = sharding.to_global(host_batch, run.mesh)
    fn = jax.jit(lambda b, k: run.task.device_preprocess(b, k)["image"])
    box = {}
    key = jax.random.key(0)

    def go(n):
        for i in range(n):
            box["out"] = fn(batch, jax.random.fold_in(key, i))

    sec = time_windows(go, lambda: box["out"].block_until_ready(), steps, windows)
    shapes = {"host": str(host_batch["image"].shape[1:]), "model_input": str(box["out"].shape[1:])}
    return _row("device_stage", len(host_batch["index"]), sec, **shapes)


def step_row(run, steps_fn, state, host_batch, steps: int, windows: int):
    from cnnjax.runtime import sharding

    batch = sharding.to_global(host_batch, run.mesh)
    box = {"state": state}

    def go(n):
        for _ in range(n):
            box["state"], box["m"] = steps_fn.train(box["state"], batch)

    sec = time_windows(go, lambda: box["m"]["loss"].block_until_ready(), steps, windows)
    return _row("step", len(host_batch["index"]), sec), box["state"]


def loop_row(run, steps_fn, state, steps: int, windows: int) -> dict:
    """The trainer's loop without logging, evaluation or checkpoints."""
    from cnnjax.engine import trainer
    from cnnjax.engine.prefetch import DevicePrefetch
    from cnnjax.runtime import sharding

    put = lambda host: sharding.to_global(host, run.mesh)
    it = DevicePrefetch(iter(trainer.train_batches(run)), put, run.config.data.device_prefetch)
    box = {"state": state, "input": 0.0, "wait": 0.0}
    in_flight = collections.deque()

    def go(n):
        for _ in range(n):
            t = time.perf_counter()
            _, batch = next(it)
            box["input"] += time.perf_counter() - t
            box["state"], m = steps_fn.train(box["state"], batch)
            t = time.perf_counter()
            it.fill()
            box["input"] += time.perf_counter() - t
            in_flight.append(m["loss"])
            if len(in_flight) > trainer.MAX_IN_FLIGHT:
                t = time.perf_counter()
                in_flight.popleft().block_until_ready()
                box["wait"] += time.perf_counter() - t

    def sync():
        while in_flight:
            in_flight.popleft().block_until_ready()

    go(2)
    sync()
    box["input"] = box["wait"] = 0.0
    sec = time_windows(go, sync, steps, windows)
    total = steps * (windows + 2)  # time_windows's 2 warm-ups and its windows
    b = run.config.data.batch_size
    return _row("trainer_loop", b, sec, input_ms=box["input"] / total * 1e3,
                wait_ms=box["wait"] / total * 1e3)  # fmt: skip


PACKAGES = ("grain", "array_record", "tensorflow_datasets", "cnnjax", "numpy", "jax")


def package_of(path: str, name: str) -> str:
    """The library a profiled function belongs to (by its file, or a builtin's module)."""
    text = (path + " " + name).replace("\\", "/")
    for p in PACKAGES:
        if f"/{p}/" in text or f"{p}." in text or f"<{p}" in text:
            return p
    return "python"


def host_profile(run, batches: int, top: int = 15) -> tuple[float, dict, list[dict]]:
    """-> (ms per example, ms per example by library, the `top` functions by own time:
    name, calls per example, ms per example, share of the total) of the host stage run in
    this thread for `batches` batches."""
    import cProfile
    import pstats

    import numpy as np

    from cnnjax.data import pipeline

    c, task = run.config, run.task
    ds = pipeline.train_examples(run.train_source, task.train_preprocess, task.features(),
                                 seed=c.train.seed)  # fmt: skip
    b = c.data.batch_size
    n = batches * b

    def work():
        for start in range(0, n, b):
            examples = [ds[i] for i in range(start, start + b)]
            {k: np.stack([e[k] for e in examples]) for k in examples[0]}

    work_once = [ds[i] for i in range(min(b, 8))]  # warm caches (tfds file handles) first
    del work_once
    prof = cProfile.Profile()
    t = time.perf_counter()
    prof.runcall(work)
    total = time.perf_counter() - t
    stats = pstats.Stats(prof).stats
    rows, by_package = [], collections.Counter()
    for (path, line, name), (_, calls, own, _, _) in stats.items():
        by_package[package_of(path, name)] += own / n * 1e3
        where = f"{os.path.basename(path)}:{line}" if line else "builtin"
        rows.append({"function": f"{name} ({where})", "calls_per_example": calls / n,
                     "ms_per_example": own / n * 1e3, "share": 0.0})  # fmt: skip
    profiled = sum(r["ms_per_example"] for r in rows)
    for r in rows:
        r["share"] = r["ms_per_example"] / profiled if profiled else 0.0
    rows.sort(key=lambda r: -r["ms_per_example"])
    return total / n * 1e3, dict(by_package.most_common()), rows[:top]


def format_profile(ms: float, by_package: dict, rows: list[dict]) -> str:
    total = sum(by_package.values()) or 1.0
    lines = [f"host stage profile (one thread, cProfile): {ms:.3f} ms per example "
             f"(profiler overhead included)",
             "  by library: " + ", ".join(f"{k} {v / total:.0%}" for k, v in by_package.items()),
             "  own time per example:"]  # fmt: skip
    lines += [
        f"  {r['share']:>6.1%} {r['ms_per_example']:>8.4f} ms "
        f"{r['calls_per_example']:>6.1f} calls  {r['function']}"
        for r in rows
    ]
    return "\n".join(lines)


def measure(config, workers: list[int], steps: int, windows: int) -> list[dict]:
    import jax

    from cnnjax.engine import trainer

    with tempfile.TemporaryDirectory() as workdir:
        with config.unlocked():
            config.train.compilation_cache_dir = "off"
        run = trainer.setup(config, workdir)
        rows = [host_row(run, w, steps, windows) for w in workers]
        host_batch = next(iter(trainer.train_batches(run)))
        rows.append(device_stage_row(run, host_batch, steps, windows))
        steps_fn = trainer.compile_steps(run)
        step, state = step_row(run, steps_fn, trainer.init_state(run), host_batch, steps, windows)
        rows += [step, loop_row(run, steps_fn, state, steps, windows)]
        if FLAGS.profile > 0:
            ms, by_package, top = host_profile(run, FLAGS.profile)
            rows.append({"row": "host_profile", "ms_per_example": ms, "by_library": by_package,
                         "top": top})  # fmt: skip
    common = {"config": FLAGS.config, "model": config.model.name, "dataset": config.data.name,
              "image_size": config.data.image_size, "dtype": config.train.compute_dtype,
              "device": jax.devices()[0].device_kind}  # fmt: skip
    return [{**common, **r} for r in rows]


def summary(rows: list[dict]) -> str:
    rows = [r for r in rows if r["row"] != "host_profile"]
    by = {r["row"]: r for r in rows}
    step = by["step"]["img_per_s"]
    best_host = max(r["img_per_s"] for r in rows if r["row"].startswith("host"))
    return (
        f"host pipeline / step: {best_host / step:.1f}x; trainer loop / step: "
        f"{by['trainer_loop']['img_per_s'] / step:.2f}"
    )


def format_row(r: dict) -> str:
    extra = " ".join(
        f"{k} {r[k]:.1f}" if isinstance(r[k], float) else f"{k} {r[k]}"
        for k in ("per_core", "input_ms", "wait_ms", "host", "model_input")
        if k in r
    )
    rate = f"{r['img_per_s']:>10.1f} img/s {r['ms_per_batch']:>9.2f} ms"
    return f"{r['row']:<18} {r['batch']:>5} {rate}  {extra}"


def main(argv):
    del argv
    from absl import logging

    logging.set_verbosity(logging.WARNING)
    if not FLAGS.json:
        c = CONFIG
        print(f"{FLAGS.config}: {c.model.name} on {c.data.name} at {c.data.image_size}px, "
              f"batch {c.data.batch_size}, {c.train.compute_dtype}; {cores()} host cores; "
              f"load average {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
    try:
        rows = measure(CONFIG, WORKERS, FLAGS.steps, FLAGS.windows)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    for r in rows:
        if FLAGS.json:
            print(json.dumps(r), flush=True)
        elif r["row"] == "host_profile":
            print(format_profile(r["ms_per_example"], r["by_library"], r["top"]), flush=True)
        else:
            print(format_row(r), flush=True)
    if not FLAGS.json:
        print(summary(rows), flush=True)
    if FLAGS.out:
        with open(FLAGS.out, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)


if __name__ == "__main__":
    import cnnjax  # noqa: F401  (sets XLA defaults before JAX starts)

    app.run(main, flags_parser=parse_flags)
