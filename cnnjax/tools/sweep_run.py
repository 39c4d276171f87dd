"""The local sweep runner: N points at once, each pinned to its share of the CPUs, finished
points skipped, interrupted ones resumed, progress with an ETA (`cnnjax.tools.sweep` is the
CLI and holds the sweep definition, the commands and the on-disk state)."""

import collections
import contextlib
import ctypes
import dataclasses
import fcntl
import functools
import json
import os
import shlex
import signal
import socket
import subprocess
import time
from pathlib import Path

from cnnjax.errors import EXIT_PREEMPTED
from cnnjax.logs.console import format_duration
from cnnjax.tools.sweep import (
    EXIT_FAILED,
    LOG_FILE,
    LOG_TAIL_LINES,
    MANIFEST,
    POLL_S,
    PR_SET_PDEATHSIG,
    STATUS_FILE,
    Point,
    cpu_slots,
    eta,
    final_step,
    has_final_eval,
    point_state,
    read_status,
    train_command,
    workdir_of,
    write_json,
)


def _child_setup(cpus: list[int], libc) -> None:
    """In the forked child, before exec: pin it to `cpus`, and have it get SIGTERM (save,
    exit 75) if the sweep dies, so that no orphan trains on unwatched."""
    os.sched_setaffinity(0, cpus)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclasses.dataclass
class _Job:
    point: Point
    proc: subprocess.Popen
    slot: int
    started: float
    lock: object  # the workdir's open, flock'ed .sweep.lock: one sweep process per point


class Runner:
    """Runs the `selected` points (default: all) `parallel` at a time, skipping done ones."""

    def __init__(self, points, configs, sweep_dir, parallel=1, selected=None, source=""):
        self.points, self.configs, self.dir = points, configs, Path(sweep_dir)
        self.selected = selected if selected is not None else points
        self.slots, self.source = cpu_slots(parallel), str(source)
        self.state = {p.name: point_state(*self._where(p)) for p in points}
        self.durations, self.stop, self._signalled, self._line = [], False, False, ""
        self._libc = ctypes.CDLL(None, use_errno=True)

    def _where(self, p: Point) -> tuple[Path, int | None]:
        wd = workdir_of(p, self.dir)
        return wd, final_step(self.configs[p.name], wd)

    def run(self) -> int:
        """-> the exit code (see the module docstring)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        pending = collections.deque(p for p in self.selected if self.state[p.name] != "done")
        if len(pending) < len(self.selected):
            print(f"[sweep] {len(self.selected) - len(pending)} point(s) done before: skipped")
        self.state |= {p.name: "pending" for p in pending}  # failed or interrupted: rerun
        free, jobs = list(range(len(self.slots))), []
        with self._signals():
            while (pending and not self.stop) or jobs:
                while pending and free and not self.stop:
                    job = self._start(pending.popleft(), free[0])
                    if job:
                        jobs.append(job)
                        free.pop(0)
                self._progress(pending, jobs)
                time.sleep(POLL_S)
                self._forward_stop(jobs)
                for job in [j for j in jobs if j.proc.poll() is not None]:
                    jobs.remove(job)
                    free.append(job.slot)
                    self._finish(job)
        self._write_manifest()
        return self._summary()

    def _forward_stop(self, jobs) -> None:
        if self.stop and not self._signalled:
            for job in jobs:
                job.proc.send_signal(signal.SIGTERM)  # the trainer saves and exits 75
            self._signalled = True

    def _start(self, point: Point, slot: int) -> _Job | None:
        wd = workdir_of(point, self.dir)
        wd.mkdir(parents=True, exist_ok=True)
        lock = open(wd / ".sweep.lock", "w")  # noqa: SIM115 (closed in _finish)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            print(f"[sweep] {point.name} is being run by another sweep process: left to it")
            self.state[point.name] = "running"
            return None
        status = read_status(wd)
        attempt, cmd = status.get("attempts", 0) + 1, train_command(point, self.dir)
        cpus = self.slots[slot]
        with open(wd / LOG_FILE, "a") as log:
            log.write(f"=== sweep attempt {attempt}, {time.ctime()}: {shlex.join(cmd)}\n")
            log.flush()
            proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_child_env(),
                start_new_session=True,  # Ctrl-C reaches the sweep only; it preempts cleanly
                preexec_fn=functools.partial(_child_setup, cpus, self._libc),
            )
        status |= {"state": "running", "exit_code": None, "attempts": attempt, "cpus": cpus}
        status |= {"pid": proc.pid, "host": socket.gethostname(), "started": time.time()}
        # A SLURM array task's job: a later --slurm submission asks squeue if it still runs.
        status["slurm_job_id"] = os.environ.get("SLURM_JOB_ID")
        status["command"] = cmd
        write_json(wd / STATUS_FILE, status)
        self._set(point, "running", f"start {point.name} (attempt {attempt}, cpus {cpus})")
        return _Job(point, proc, slot, time.time(), lock)

    def _finish(self, job: _Job) -> None:
        code, took = job.proc.returncode, time.time() - job.started
        wd, step = self._where(job.point)
        ok = code == 0 and has_final_eval(wd, step)
        # Our SIGTERM can land before the child's Python installs its handler: killed, -15.
        stopped = code == EXIT_PREEMPTED or (self._signalled and code == -signal.SIGTERM)
        state = "done" if ok else "interrupted" if stopped else "failed"
        status = read_status(wd)
        elapsed = round(status.get("elapsed_s", 0.0) + took, 3)  # over all attempts
        status |= {"state": state, "exit_code": code, "finished": time.time()}
        status |= {"duration_s": round(took, 3), "elapsed_s": elapsed}
        write_json(wd / STATUS_FILE, status)
        job.lock.close()
        self.durations += [took] if ok else []
        why = f" but no eval row at step {step}" if code == 0 and not ok else ""
        took = format_duration(took)
        self._set(job.point, state, f"{state} {job.point.name}: exit {code}{why} in {took}")

    def _set(self, point: Point, state: str, message: str) -> None:
        self.state[point.name] = state
        print(f"[sweep] {message}", flush=True)
        self._write_manifest()

    def _progress(self, pending, jobs) -> None:
        n = collections.Counter(self.state[p.name] for p in self.selected)
        running = [time.time() - j.started for j in jobs]
        left = eta(self.durations, len(pending), running, len(self.slots))
        line = (
            f"[sweep] {n['done']}/{len(self.selected)} done, {n['running']} running, "
            f"{n['failed']} failed, {n['interrupted']} interrupted, {len(pending)} pending"
        )
        if line != self._line:  # one line per change of the counts, not per poll
            print(line + (f", ETA {format_duration(left)}" if left is not None else ""), flush=True)
            self._line = line

    def _write_manifest(self) -> None:
        own = {p.name: self.state[p.name] for p in self.selected}
        write_manifest(self.dir, self.points, self.configs, self.source, own)

    def _summary(self) -> int:
        states = {p.name: self.state[p.name] for p in self.selected}
        for name in (n for n, s in states.items() if s == "failed"):
            log = self.dir / name / LOG_FILE
            print(f"--- {name} failed; the end of {log}:\n{_tail(log)}", flush=True)
        n = collections.Counter(states.values())
        rest = [f", {n[s]} {s}" for s in ("failed", "interrupted", "running") if n[s]]
        print(f"[sweep] {n['done']}/{len(states)} done{''.join(rest)}", flush=True)
        if self.stop:
            print("[sweep] stopped: rerun the same command to resume", flush=True)
            return EXIT_PREEMPTED
        return 0 if n["done"] == len(states) else EXIT_FAILED

    @contextlib.contextmanager
    def _signals(self):
        """SIGTERM / SIGINT set `stop`: no new runs start; the running ones get SIGTERM."""
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)

    def _on_signal(self, signum, frame) -> None:
        self.stop = True


def write_manifest(sweep_dir, points, configs, source, own=None, slurm=None) -> None:
    """DIR/sweep.json: every point, its command and its state (what the report reads).

    `own`: {name: state} of the points this process runs; the others' states are read from
    their workdirs, as concurrent SLURM array tasks each run one point and all write this
    file (under a lock, so each sees the others' finished statuses). `slurm`: the record of
    a submission (job id, array, script); kept across rewrites until the next one.
    """
    sweep_dir, own = Path(sweep_dir), own or {}
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with open(sweep_dir / f".{MANIFEST}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        points = [
            {"index": i, **dataclasses.asdict(p), "workdir": str(workdir_of(p, sweep_dir)),
             "command": train_command(p, sweep_dir),
             "state": own.get(p.name) or _disk_state(p, configs, sweep_dir)}
            for i, p in enumerate(points)
        ]  # fmt: skip
        manifest = {"sweep_file": str(source), "sweep_dir": str(sweep_dir), "points": points}
        slurm = slurm or _read_json(sweep_dir / MANIFEST).get("slurm")
        write_json(sweep_dir / MANIFEST, manifest | ({"slurm": slurm} if slurm else {}))


def _disk_state(point: Point, configs, sweep_dir) -> str:
    wd = workdir_of(point, sweep_dir)
    return point_state(wd, final_step(configs[point.name], wd))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _child_env() -> dict:
    # Wide enough that the trainer's start-up table (the 'model NAME N parameters' line the
    # report reads) never wraps in train.log; unbuffered so a killed run's log is complete.
    return {**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}


def _tail(path: Path, n: int = LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no train.log)"
