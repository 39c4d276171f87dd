"""What keeps a run from being lost: SIGTERM preemption, the non-finite step guard and the
opt-in log of the record ids each step trained on (`workdir/records.jsonl`)."""

import contextlib
import json
import os
import signal
import sys
import threading
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np


class Preempted(Exception):
    """SIGTERM: a checkpoint of `step` is on disk; the same command resumes there."""

    def __init__(self, step: int):
        super().__init__(f"preempted (SIGTERM): saved a checkpoint at step {step}; rerun to resume")
        self.step = step


class PeerFailed(RuntimeError):
    """Multi-process run: a collective or JAX's distributed runtime failed on this process,
    almost always because another process of the run died."""

    def __init__(self, process_index: int, process_count: int, cause: Exception):
        first = (str(cause).strip().splitlines() or [""])[0][:300]
        super().__init__(
            f"process {process_index} of {process_count}: a collective failed, most likely "
            f"because another process of this run died ({type(cause).__name__}: {first}). "
            "Checkpoints on disk are intact; restart every process with the same command "
            "to resume."
        )


class NonFiniteError(RuntimeError):
    """A step produced a NaN/Inf loss, gradient or parameter (train.nan_policy='stop')."""


class Preemption:
    """SIGTERM handling. The Python handler only sets `requested`, which the train loop checks
    once per step (it then saves and exits). A Python handler cannot run while the main
    thread is inside XLA (compiling the first step can take tens of seconds), so a watcher
    thread also wakes on the signal (`signal.set_wakeup_fd`): if nothing has been trained
    since the process started (`mark_progress` not yet called), there is nothing to save and
    it exits at once with `exit_code`; otherwise it leaves the save to the loop.
    """

    def __init__(self, exit_code: int | None = None):
        self.requested = False
        self.exit_code = exit_code
        self._progress = False
        self._lock = threading.Lock()

    def mark_progress(self) -> None:
        """Called before the first step is dispatched: from now on SIGTERM means 'save'."""
        with self._lock:
            self._progress = True

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread() or jax.process_count() > 1:
            # Signal handlers can only be set from the main thread. With jax.distributed,
            # JAX's own preemption notifier owns SIGTERM (Orbax's reached_preemption).
            yield self
            return
        previous = signal.signal(signal.SIGTERM, self._handle)
        wake_r = wake_w = None
        old_fd = -1
        if self.exit_code is not None:
            wake_r, wake_w = os.pipe()
            os.set_blocking(wake_w, False)
            old_fd = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
            threading.Thread(target=self._watch, args=(wake_r,), daemon=True).start()
        try:
            yield self
        finally:
            signal.signal(signal.SIGTERM, previous)
            if wake_w is not None:
                signal.set_wakeup_fd(old_fd)
                os.close(wake_w)  # ends the watcher (read returns b"")

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def _watch(self, fd: int) -> None:
        """Reads signal numbers until `installed` closes the write end."""
        try:
            while got := os.read(fd, 64):
                if signal.SIGTERM not in got:
                    continue
                with self._lock:
                    if self._progress:
                        continue  # the loop saves at its next step
                    print(
                        "preempted (SIGTERM) before the first step: nothing new to save; "
                        "rerun to resume",
                        file=sys.stderr,
                        flush=True,
                    )
                    os._exit(self.exit_code)
        finally:
            os.close(fd)


def guarded_step(state, batch, *, step_fn, skip_nonfinite: bool):
    """`step_fn` plus metrics['nonfinite'] ([] float32, 1 if the loss, gradient norm or new
    parameter norm is NaN/Inf). With `skip_nonfinite` such a step changes nothing but the
    step counter and rng: params, batch_stats, optimizer state (and any other array of the
    state, e.g. an EMA) keep their old values."""
    new_state, metrics = step_fn(state, batch)
    finite = jnp.isfinite(metrics["loss"])
    for name in ("grad_norm", "param_norm"):
        if name in metrics:
            finite &= jnp.isfinite(metrics[name])
    if skip_nonfinite:
        kept = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
        new_state = kept.replace(step=new_state.step, rng=new_state.rng)
    return new_state, {**metrics, "nonfinite": 1.0 - finite.astype(jnp.float32)}


class FiniteCheck:
    """Collects each step's non-finite flag without syncing; `flush` (before logging and
    saving) fetches them. policy 'stop' raises naming the first bad step and its records;
    'skip' counts them in `skipped`."""

    def __init__(self, policy: str, skipped: int = 0):
        self.policy, self.skipped, self._pending = policy, skipped, []

    def add(self, step: int, flag, record_ids) -> None:
        self._pending.append((step, flag, record_ids))

    def flush(self) -> None:
        if not self._pending:
            return
        flags = jax.device_get([f for _, f, _ in self._pending])
        bad = [(s, ids) for (s, _, ids), f in zip(self._pending, flags, strict=True) if f > 0]
        self._pending = []
        if bad and self.policy == "stop":
            step, ids = bad[0]
            raise NonFiniteError(
                f"non-finite loss, gradient or parameters at step {step}, batch of records "
                f"{np.asarray(ids).tolist()}. No checkpoint of it was written; the last good one "
                "is kept. Lower optim.learning_rate, set optim.grad_clip_norm, check those "
                "records, or set train.nan_policy='skip' to skip such steps."
            )
        self.skipped += len(bad)


class RecordLog:
    """Appends {step, ids} per step to `records.jsonl` (process i > 0: records.<i>.jsonl).

    Opening at `start` drops rows of steps after it (trained but never checkpointed), so a
    resumed log equals an uninterrupted one.
    """

    def __init__(self, workdir, start: int, process_index: int = 0):
        name = "records.jsonl" if process_index == 0 else f"records.{process_index}.jsonl"
        self.path = Path(workdir) / name
        rows = read_records(self.path) if start else []
        kept = [r for r in rows if r["step"] <= start]
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        tmp.replace(self.path)
        self._file = open(self.path, "a")  # noqa: SIM115 - closed by close()

    def append(self, step: int, ids) -> None:
        # Flushed per step, before the checkpoint of the step can start: a kill never loses
        # rows of a checkpointed step.
        self._file.write(json.dumps({"step": step, "ids": np.asarray(ids).tolist()}) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_records(path) -> list[dict]:
    """Rows of a record log; a partial last line (from a kill) is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
    return rows
