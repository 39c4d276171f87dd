"""The trainer's own input path against what its model consumes, side by side in one run.

    ./launch.sh bench-input [--config=configs/resnet20_cifar.py:digits] [--config.x=y ...]
        [--workers=0,2] [--steps=20] [--windows=3] [--json] [--out=FILE]

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
    common = {"config": FLAGS.config, "model": config.model.name, "dataset": config.data.name,
              "image_size": config.data.image_size, "dtype": config.train.compute_dtype,
              "device": jax.devices()[0].device_kind}  # fmt: skip
    return [{**common, **r} for r in rows]


def summary(rows: list[dict]) -> str:
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
        print(json.dumps(r) if FLAGS.json else format_row(r), flush=True)
    if not FLAGS.json:
        print(summary(rows), flush=True)
    if FLAGS.out:
        with open(FLAGS.out, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)


if __name__ == "__main__":
    import cnnjax  # noqa: F401  (sets XLA defaults before JAX starts)

    app.run(main, flags_parser=parse_flags)
