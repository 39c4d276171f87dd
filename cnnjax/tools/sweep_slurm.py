"""Sweeps on SLURM: one sbatch array job over the points not yet done. Array task I runs
`python -m cnnjax.tools.sweep SWEEP.py --sweep_dir=DIR --point-index=I`, the local runner on
point I alone, so its status, train.log and resume are those of a local sweep.

The script (DIR/sweep.sbatch) changes to the submitting directory and runs this Python, so
the repository, the venv and DIR must be on a file system every node sees. SLURM's output
of task I goes to DIR/slurm-<job>_<I>.out; the job id goes into DIR/sweep.json.
"""

import dataclasses
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from cnnjax.errors import EXIT_BAD_INPUT, EXIT_PREEMPTED
from cnnjax.logs.console import format_duration
from cnnjax.tools.sweep import (
    EXIT_FAILED,
    LOG_FILE,
    Point,
    SweepError,
    final_step,
    point_state,
    read_status,
    workdir_of,
)
from cnnjax.tools.sweep_run import write_manifest

SCRIPT = "sweep.sbatch"
WAIT_POLL_S = 2.0
MEM_RE = re.compile(r"\d+[KMGT]?")
TIME_RE = re.compile(r"(\d+-)?\d+(:\d+){0,2}|\d+-\d+|UNLIMITED|INFINITE", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Resources:
    """What each array task asks for, in sbatch's spellings.

    cpus_per_task: the task's CPUs (XLA:CPU sizes its thread pools from them).
    mem: memory per node of the task ('16G', '4000M'). time: its limit ('24:00:00', '2-0').
    max_running: at most this many tasks at once (the array's '%N'); None: no limit.
    extra: further sbatch options, verbatim ('--partition=gpu', '--gpus-per-task=1').
    """

    cpus_per_task: int = 4
    mem: str = "16G"
    time: str = "24:00:00"
    max_running: int | None = None
    extra: tuple[str, ...] = ()

    def __post_init__(self):
        if self.cpus_per_task < 1:
            raise SweepError(f"--cpus-per-task={self.cpus_per_task} must be at least 1")
        if not MEM_RE.fullmatch(self.mem):
            raise SweepError(f"--mem={self.mem!r} is not a size like 16G or 4000M")
        if not TIME_RE.fullmatch(self.time):
            raise SweepError(f"--time={self.time!r} is not a SLURM time like 24:00:00 or 2-0")
        if self.max_running is not None and self.max_running < 1:
            raise SweepError(f"--parallel={self.max_running} must be at least 1")
        bad = [a for a in self.extra if not a.startswith("-") or _unsafe(a)]
        if bad:
            raise SweepError(f"--slurm-arg={bad[0]!r} is not one sbatch option (--name=value)")


def _unsafe(text: str) -> bool:
    """#SBATCH lines are not shell-quoted: whitespace would split a value."""
    return any(c.isspace() for c in text)


def array_spec(indices, max_running: int | None = None) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2,5,7-8' (with '%N' appended for max_running=N)."""
    runs, indices = [], sorted(set(indices))
    for i in indices:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    spec = ",".join(f"{a}-{b}" if b > a else f"{a}" for a, b in runs)
    return spec + (f"%{max_running}" if max_running else "")


def sbatch_script(sweep_file, sweep_dir, indices, resources: Resources, cwd=None,
                  python: str = sys.executable) -> str:  # fmt: skip
    """The array job's script text: task I runs point I (no side effects)."""
    cwd, sweep_dir = str(cwd or Path.cwd()), str(sweep_dir)
    for what, path in (("the current directory", cwd), ("--sweep_dir", sweep_dir)):
        if _unsafe(path) or "%" in path:
            raise SweepError(f"--slurm needs {what} without spaces or '%': {path!r}")
    r = resources
    options = [
        f"--job-name=sweep-{Path(sweep_dir).name}",
        f"--array={array_spec(indices, r.max_running)}",
        "--ntasks=1",
        f"--cpus-per-task={r.cpus_per_task}",
        f"--mem={r.mem}",
        f"--time={r.time}",
        f"--chdir={cwd}",
        f"--output={sweep_dir}/slurm-%A_%a.out",
        *r.extra,
    ]
    run = [python, "-m", "cnnjax.tools.sweep", str(sweep_file), f"--sweep_dir={sweep_dir}"]
    lines = [
        "#!/bin/bash",
        f"# The points of {sweep_file} not done at submission, one array task each",
        "# (written by python -m cnnjax.tools.sweep --slurm; rerun that to submit what is left).",
        *(f"#SBATCH {o}" for o in options),
        "set -euo pipefail",
        f"cd {shlex.quote(cwd)}",
        f'exec {shlex.join(run)} --point-index="$SLURM_ARRAY_TASK_ID"',
    ]
    return "\n".join(lines) + "\n"


# --- which points to submit ------------------------------------------------------------


def _queued(job_id: str) -> list[tuple[str, str]]:
    """[(state, reason)] of job `job_id`'s tasks that SLURM lists (pending, running...)."""
    try:
        proc = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T %r"], capture_output=True,
                              text=True)  # fmt: skip
    except FileNotFoundError as e:
        raise RuntimeError("SLURM's squeue is not on PATH") from e
    if proc.returncode != 0:
        if "Invalid job id" in proc.stderr:
            return []  # finished long enough ago to be forgotten
        raise RuntimeError(f"squeue failed: {proc.stderr.strip() or proc.returncode}")
    return [tuple(line.split(" ", 1)) for line in proc.stdout.splitlines() if " " in line]


def states(points: list[Point], configs: dict, sweep_dir, check_jobs: bool = True) -> dict:
    """{name: state} from the workdirs; with `check_jobs`, a 'running' point whose SLURM task
    has gone (a node lost, a task killed before its runner could write) is 'interrupted'."""
    out = {}
    for p in points:
        wd = workdir_of(p, sweep_dir)
        state = point_state(wd, final_step(configs[p.name], wd))
        job = read_status(wd).get("slurm_job_id")
        if check_jobs and state == "running" and job and not _queued(str(job)):
            state = "interrupted"
        out[p.name] = state
    return out


# --- submit, then optionally wait ------------------------------------------------------


def submit(script: Path) -> str:
    """sbatch --parsable SCRIPT -> the job id (SweepError with sbatch's message if refused)."""
    proc = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True)
    if proc.returncode != 0:
        message = " ".join(proc.stderr.split()) or f"exit {proc.returncode}"
        raise SweepError(f"sbatch refused {script}: {message}")
    return proc.stdout.strip().split(";")[0]  # 'id' or 'id;cluster'


def wait(job_id: str, points, configs, sweep_dir, poll_s: float = WAIT_POLL_S) -> dict:
    """Blocks until job `job_id` has left the queue, printing a line per change of the
    counts -> {name: state} of `points` from their workdirs afterwards."""
    started, line = time.time(), ""
    while True:
        try:
            queued = _queued(job_id)
        except RuntimeError as e:
            print(f"[sweep] {e}; still waiting", file=sys.stderr, flush=True)
            queued = [("UNKNOWN", "squeue failed")]
        now = states(points, configs, sweep_dir, check_jobs=False)
        counts = {s: sum(v == s for v in now.values()) for s in ("done", "running", "failed")}
        new = f"[sweep] job {job_id}: {counts['done']}/{len(points)} done, " + ", ".join(
            f"{n} {s}" for s, n in counts.items() if s != "done"
        )
        # Why tasks wait (e.g. 'PartitionConfig': asking for more than any node has).
        reasons = sorted({r for state, r in queued if state == "PENDING" and r != "None"})
        new += f"; pending: {', '.join(reasons)}" if reasons else ""
        if new != line:
            print(f"{new} ({format_duration(time.time() - started)})", flush=True)
            line = new
        if not queued:
            return now
        time.sleep(poll_s)


def main(args, points: list[Point], configs: dict, selected: list[Point], sweep_dir) -> int:
    """`python -m cnnjax.tools.sweep ... --slurm`: -> the exit code (see cnnjax.tools.sweep)."""
    sweep_dir = Path(sweep_dir)
    try:
        resources = _resources(args)
        if not args.dry_run and shutil.which("sbatch") is None:
            raise SweepError("--slurm needs SLURM's sbatch, which is not on PATH")
        todo = _todo(selected, configs, sweep_dir)
        if not todo:
            print("[sweep] nothing to submit", flush=True)
            return 0
        indices = [points.index(p) for p in todo]
        script = sbatch_script(args.sweep_file, sweep_dir, indices, resources)
        if args.dry_run:
            print(script, end="")
            print(f"{len(todo)} point(s) to submit; nothing submitted (--dry-run)",
                  file=sys.stderr)  # fmt: skip
            return 0
        job_id = _submit(script, indices, points, configs, args.sweep_file, sweep_dir)
    except (SweepError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if not args.wait:
        return 0
    try:
        wait(job_id, todo, configs, sweep_dir)
    except KeyboardInterrupt:
        print(f"[sweep] stopped waiting; job {job_id} goes on (scancel {job_id} stops it)")
        return EXIT_PREEMPTED
    return _report(states(selected, configs, sweep_dir), sweep_dir, job_id)


def _resources(args) -> Resources:
    given = {"cpus_per_task": args.cpus_per_task, "mem": args.mem, "time": args.time}
    return Resources(
        **{k: v for k, v in given.items() if v is not None},
        max_running=args.parallel,
        extra=tuple(args.slurm_arg or ()),
    )


def _todo(selected: list[Point], configs: dict, sweep_dir: Path) -> list[Point]:
    """The points to submit: neither done nor running (in a live task or elsewhere)."""
    now = states(selected, configs, sweep_dir)
    for state in ("done", "running"):
        n = sum(s == state for s in now.values())
        if n:
            print(f"[sweep] {n} point(s) {state}: not submitted", flush=True)
    return [p for p in selected if now[p.name] not in ("done", "running")]


def _submit(script: str, indices, points, configs, sweep_file, sweep_dir: Path) -> str:
    """Writes DIR/sweep.sbatch, submits it, records the job in sweep.json -> the job id."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / SCRIPT).write_text(script)
    job_id = submit(sweep_dir / SCRIPT)
    record = {"job_id": job_id, "array": array_spec(indices), "script": str(sweep_dir / SCRIPT),
              "submitted": time.time()}  # fmt: skip
    write_manifest(sweep_dir, points, configs, sweep_file, slurm=record)
    print(f"[sweep] submitted job {job_id}: {len(indices)} point(s), array {record['array']}",
          flush=True)  # fmt: skip
    return job_id


def _report(final: dict, sweep_dir: Path, job_id: str) -> int:
    bad = {name: s for name, s in final.items() if s != "done"}
    for name, state in bad.items():
        logs = f"{sweep_dir / name / LOG_FILE}, {sweep_dir}/slurm-{job_id}_*.out"
        print(f"[sweep] {name}: {state} (see {logs})", flush=True)
    print(f"[sweep] job {job_id}: {len(final) - len(bad)}/{len(final)} done", flush=True)
    return EXIT_FAILED if bad else 0
