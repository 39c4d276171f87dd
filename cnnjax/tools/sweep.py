"""Sweeps: the training runs of one experiment, each in its own workdir; rerun to resume.

    python -m cnnjax.tools.sweep experiments/NAME/sweep.py [--sweep_dir=DIR] [--parallel=N]
        [--dry-run] [--point-index=I]
        [--slurm [--wait] [--cpus-per-task=C] [--mem=M] [--time=T] [--slurm-arg=OPT ...]]

`experiments/NAME/sweep.py` defines `get_sweep()` -> list[Point]. Point I runs the pure
`train_command(point, sweep_dir)`: `python -m cnnjax.train --config=... --workdir=DIR/NAME
--config.train.seed=S --config.k=v ...` (config paths are relative to the current directory,
the repo root, as for the train CLI; DIR defaults to runs/sweeps/<experiment folder>, or
<folder>_<stem> for a sweep file not named sweep.py). Its
output goes to `<workdir>/train.log`, its exit to `<workdir>/sweep_status.json`, and every
point with its state to `DIR/sweep.json`. A point is done when its status says exit 0 and its
metrics hold an eval row at the final step; a rerun skips done points and reruns the others,
which resume from their newest checkpoint (exit 75, preempted, is 'interrupted').
`--point-index=I` runs point I alone (a SLURM array task: I = $SLURM_ARRAY_TASK_ID).

--slurm submits the points not yet done as one SLURM array job instead (cnnjax.tools.
sweep_slurm): it writes DIR/sweep.sbatch, whose task I runs this command with
--point-index=I, submits it with `sbatch --parsable`, prints the job id and records it in
sweep.json. Each task asks for --cpus-per-task (default 4), --mem (16G) and --time
(24:00:00); --parallel=N caps the tasks running at once (the array's %N); --slurm-arg passes
any other sbatch option (--slurm-arg=--partition=gpu --slurm-arg=--gpus-per-task=1). With
--dry-run it prints the script and submits nothing; --wait waits for the job and exits 0
only if every point is done. Rerunning it submits only what is still not done.

--parallel N runs N points at once, each pinned to a disjoint share of this process's CPUs
(sched_setaffinity in the child). XLA:CPU sizes its thread pools from that mask (jaxlib 0.10:
13 threads pinned to 1 core, 17 on 2); this jaxlib has no thread-count XLA flag
(--xla_cpu_multi_thread_eigen is only on/off), so no XLA_FLAGS are set.

Exit: 0 every point finished (--slurm: submitted), 1 a point failed (the tail of its
train.log is printed) or was interrupted, 2 a bad sweep file or argument (--slurm: no sbatch,
or sbatch refused the job), 75 the sweep was stopped (SIGTERM or Ctrl-C: its runs were told to
save and stop; rerun to resume; --slurm --wait: the job goes on).
"""

import argparse
import collections
import dataclasses
import importlib.util
import json
import os
import re
import shlex
import socket
import sys
import traceback
from collections.abc import Mapping
from pathlib import Path

from cnnjax.config import files
from cnnjax.engine.build import num_train_steps
from cnnjax.errors import EXIT_BAD_INPUT, EXIT_PREEMPTED, ConfigError
from cnnjax.logs.writers import read_metrics

STATUS_FILE, LOG_FILE, MANIFEST = "sweep_status.json", "train.log", "sweep.json"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
EXIT_FAILED = 1
POLL_S = 0.2
LOG_TAIL_LINES = 15
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class SweepError(ConfigError):
    """A sweep file, point or sweep argument that cannot be used (exit 2)."""


@dataclasses.dataclass(frozen=True)
class Point:
    """One run of a sweep.

    name: unique and filesystem-safe (letters, digits, '._-'): the workdir's name.
    config: 'configs/x.py[:args]'.
    overrides: {dotted key: value} or ['key=value', ...]; kept as a tuple of 'key=value'
        strings, passed on as --config.key=value (values are written with repr()).
    seed: sets train.seed.
    group: the variant whose seeds the report aggregates ('' = name less a '_s<seed>' tail).
    """

    name: str
    config: str
    overrides: tuple = ()
    seed: int = 0
    group: str = ""

    def __post_init__(self):
        if not isinstance(self.name, str) or not NAME_RE.fullmatch(self.name):
            raise SweepError(
                f"point name {self.name!r} is not filesystem-safe "
                "(a letter or digit, then letters, digits, '.', '_', '-'; up to 100)"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise SweepError(f"point '{self.name}': seed {self.seed!r} is not an int")
        if not isinstance(self.config, str) or not self.config:
            raise SweepError(f"point '{self.name}': config must be 'configs/x.py[:args]'")
        object.__setattr__(self, "overrides", _override_strings(self.name, self.overrides))
        if not self.group:
            object.__setattr__(self, "group", default_group(self.name, self.seed))


def _override_strings(name: str, overrides) -> tuple[str, ...]:
    if isinstance(overrides, Mapping):
        items = [f"{k}={v if isinstance(v, str) else repr(v)}" for k, v in overrides.items()]
    elif isinstance(overrides, str):
        raise SweepError(f"point '{name}': overrides must be a dict or a list of 'key=value'")
    else:
        items = [str(x) for x in overrides]
    try:
        keys = files.parse_overrides(items)
    except ConfigError as e:
        raise SweepError(f"point '{name}': {e}") from e
    if "train.seed" in keys:
        raise SweepError(f"point '{name}': set the seed with Point(seed=...), not train.seed")
    return tuple(items)


def short_run(steps: int, image_size: int = 16, log_every: int = 25) -> dict:
    """The schedule overrides the classification ablations in experiments/ share: inputs at
    `image_size` px, `steps` steps logged every `log_every`, four checkpoints, eight evals."""
    return {
        "data.image_size": image_size,
        "train.num_steps": steps,
        "train.log_every_steps": log_every,
        "train.checkpoint_every_steps": steps // 4,
        "eval.every_steps": steps // 8,
    }


def default_group(name: str, seed: int) -> str:
    """'lr0.1_s3' with seed 3 -> 'lr0.1'; any other name is its own group."""
    tail = f"_s{seed}"
    return name[: -len(tail)] if name.endswith(tail) and len(name) > len(tail) else name


# --- pure command construction (reused by a SLURM array job) ---------------------------


def workdir_of(point: Point, sweep_dir) -> Path:
    return Path(sweep_dir) / point.name


def override_args(point: Point) -> list[str]:
    """['--config.train.seed=S', '--config.k=v', ...]: what the point sets."""
    return [f"--config.train.seed={point.seed}", *(f"--config.{o}" for o in point.overrides)]


def train_command(point: Point, sweep_dir, python: str = sys.executable) -> list[str]:
    """The argv that trains `point` in its workdir under `sweep_dir` (no side effects)."""
    workdir = workdir_of(point, sweep_dir)
    return [
        python,
        "-m",
        "cnnjax.train",
        f"--config={point.config}",
        f"--workdir={workdir}",
        *override_args(point),
    ]


def default_sweep_dir(sweep_file) -> Path:
    """runs/sweeps/<the experiment folder's name> (relative to the current directory) for
    experiments/NAME/sweep.py; runs/sweeps/NAME_STEM for another file STEM.py of the folder
    (an experiment's earlier stage, e.g. experiments/transfer/pretrain.py)."""
    path = Path(sweep_file).resolve()
    name = path.parent.name if path.stem == "sweep" else f"{path.parent.name}_{path.stem}"
    return Path("runs/sweeps") / name


# --- loading and validating a sweep file ------------------------------------------------


def load_sweep(path) -> list[Point]:
    """The points of sweep file `path` (SweepError, naming the file or point, if bad)."""
    path = Path(path)
    if path.suffix != ".py" or not path.is_file():
        raise SweepError(f"sweep file '{path}' does not exist (experiments/NAME/sweep.py)")
    module = _exec(path)
    if not callable(getattr(module, "get_sweep", None)):
        raise SweepError(f"sweep file '{path}' defines no get_sweep() -> list[Point]")
    points = _call(path, lambda: list(module.get_sweep()))
    bad = [p for p in points if not isinstance(p, Point)]
    if bad:
        raise SweepError(f"{path}: get_sweep() returned {type(bad[0]).__name__}, not Point")
    if not points:
        raise SweepError(f"{path}: get_sweep() returned no points")
    counts = collections.Counter(p.name for p in points)
    dups = sorted(n for n, c in counts.items() if c > 1)
    if dups:
        raise SweepError(f"{path}: duplicate point names: {', '.join(dups)}")
    return points


def _exec(path: Path):
    spec = importlib.util.spec_from_file_location(f"cnnjax_sweep_{path.parent.name}", path)
    module = importlib.util.module_from_spec(spec)
    _call(path, spec.loader.exec_module, module)
    return module


def _call(path: Path, fn, *args):
    """fn(*args), with any error turned into a SweepError naming the sweep file's line."""
    try:
        return fn(*args)
    except SweepError as e:
        raise SweepError(f"{path}: {e}") from e
    except Exception as e:
        lines = [f.lineno for f in traceback.extract_tb(e.__traceback__) if f.filename == str(path)]
        where = f" line {lines[-1]}" if lines else ""
        raise SweepError(f"sweep file '{path}'{where}: {type(e).__name__}: {e}") from e


def validate(points: list[Point]) -> dict:
    """{name: the point's config}, loaded with its seed and overrides as the train CLI would."""
    configs = {}
    for p in points:
        try:
            configs[p.name] = files.load(p.config, [f"train.seed={p.seed}", *p.overrides])
        except ConfigError as e:
            raise SweepError(f"point '{p.name}': {e}") from e
    return configs


# --- the state of a point on disk ------------------------------------------------------


def read_status(workdir) -> dict:
    try:
        return json.loads((Path(workdir) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return {}


def write_json(path: Path, obj) -> None:
    """Atomic: readers (the report, a concurrent array task) never see half a file."""
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def final_step(config, workdir) -> int | None:
    """The run's last step (None if it counts epochs and the workdir has no dataset info)."""
    if config.train.num_epochs <= 0:
        return config.train.num_steps
    try:
        info = json.loads((Path(workdir) / "dataset_info.json").read_text())
    except (OSError, ValueError):
        return None
    return num_train_steps(config, info["num_train"])


def has_final_eval(workdir, step: int | None) -> bool:
    rows = read_metrics(workdir)
    return step is not None and any(
        r.get("split") == "eval" and r.get("step") == step for r in rows
    )


def point_state(workdir, step: int | None) -> str:
    """'done' | 'running' | 'failed' | 'interrupted' | 'pending', from the workdir alone."""
    workdir = Path(workdir)
    status = read_status(workdir)
    if not status:
        if has_final_eval(workdir, step):
            return "done"  # trained outside the sweep
        return "interrupted" if (workdir / "metrics.jsonl").exists() else "pending"
    code = status.get("exit_code")
    if code is None:
        return "running" if _alive(status) else "interrupted"
    if code == 0:
        return "done" if has_final_eval(workdir, step) else "interrupted"
    return "interrupted" if code == EXIT_PREEMPTED else "failed"


def _alive(status: dict) -> bool:
    if status.get("host") != socket.gethostname():
        return True  # another node's run: trust its status
    pid = int(status.get("pid") or 0)
    try:
        os.kill(pid, 0) if pid > 0 else None
    except ProcessLookupError:
        return False
    except OSError:
        return True  # e.g. another user's process
    return pid > 0


# --- running ---------------------------------------------------------------------------


def cpu_slots(parallel: int, cpus=None) -> list[list[int]]:
    """`parallel` disjoint, contiguous shares of `cpus` (default: this process's), as even as
    possible; with more runs than CPUs, the runs take single CPUs round-robin."""
    cpus = sorted(cpus if cpus is not None else os.sched_getaffinity(0))
    if parallel >= len(cpus):
        return [[cpus[i % len(cpus)]] for i in range(parallel)]
    size, extra = divmod(len(cpus), parallel)
    bounds = [i * size + min(i, extra) for i in range(parallel + 1)]
    return [cpus[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def eta(durations: list[float], pending: int, running_elapsed: list[float], parallel: int):
    """Seconds left, from the mean duration of the runs finished so far (None before one)."""
    if not durations:
        return None
    mean = sum(durations) / len(durations)
    work = pending * mean + sum(max(mean - e, 0.0) for e in running_elapsed)
    return work / max(1, parallel)


def _parse(argv):
    raw = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser("python -m cnnjax.tools.sweep", None, __doc__, formatter_class=raw)
    add = p.add_argument
    add("sweep_file", help="experiments/NAME/sweep.py")
    add("--sweep_dir", "--sweep-dir", default="", help="default: runs/sweeps/NAME")
    add("--parallel", type=int, help="points run at once, each on its CPU share (default 1)")
    add("--dry-run", "--dry_run", action="store_true", help="validate, print commands, run none")
    add("--point-index", "--point_index", type=int, help="run point I only (SLURM array task)")
    add("--slurm", action="store_true", help="submit the points not done as a SLURM array job")
    add("--wait", action="store_true", help="--slurm: wait for the job; 0 if every point is done")
    add("--cpus-per-task", "--cpus_per_task", type=int, help="--slurm: CPUs per task (4)")
    add("--mem", help="--slurm: memory per task (16G)")
    add("--time", help="--slurm: time limit per task (24:00:00)")
    add("--slurm-arg", "--slurm_arg", action="append", help="--slurm: another sbatch option")
    return p.parse_args(argv)


def _check_slurm_args(args) -> None:
    given = [f for f in ("wait", "cpus_per_task", "mem", "time", "slurm_arg") if getattr(args, f)]
    if given and not args.slurm:
        raise SweepError(f"--{given[0].replace('_', '-')} needs --slurm")


def _select(points: list[Point], index: int | None) -> list[Point]:
    if index is None:
        return points
    if not 0 <= index < len(points):
        raise SweepError(f"--point-index={index} is not in 0..{len(points) - 1} (the points)")
    return [points[index]]


def main(argv=None) -> int:
    args = _parse(argv)
    try:
        if args.parallel is not None and args.parallel < 1:
            raise SweepError(f"--parallel={args.parallel} must be at least 1")
        _check_slurm_args(args)
        points = load_sweep(args.sweep_file)
        configs = validate(points)
        selected = _select(points, args.point_index)
    except SweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    sweep_dir = Path(args.sweep_dir) if args.sweep_dir else default_sweep_dir(args.sweep_file)
    if args.slurm:
        from cnnjax.tools import sweep_slurm

        return sweep_slurm.main(args, points, configs, selected, sweep_dir)
    if args.dry_run:
        for p in selected:
            cmd = shlex.join(train_command(p, sweep_dir))
            print(f"{points.index(p)} {p.name} [{p.group}]: {cmd}")
        print(f"{len(selected)} point(s) valid; nothing run (--dry-run)", file=sys.stderr)
        return 0
    from cnnjax.tools.sweep_run import Runner  # the local runner; sweep_run imports this module

    parallel = 1 if args.point_index is not None else args.parallel or 1
    runner = Runner(points, configs, sweep_dir, parallel, selected, source=args.sweep_file)
    return runner.run()


if __name__ == "__main__":
    # Through the importable module, so that the sweep file's `Point` is this `Point`.
    from cnnjax.tools import sweep as _sweep

    sys.exit(_sweep.main())
