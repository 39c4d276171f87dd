"""What keeps a run from being lost: SIGTERM preemption, the non-finite step guard and the
opt-in log of the record ids each step trained on (`workdir/records.jsonl`)."""

import contextlib
import json
import signal
import threading
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

NAN_POLICIES = ("stop", "skip")


class Preempted(Exception):
    """SIGTERM: a checkpoint of `step` is on disk; the same command resumes there."""

    def __init__(self, step: int):
        super().__init__(f"preempted (SIGTERM): saved a checkpoint at step {step}; rerun to resume")
        self.step = step


class NonFiniteError(RuntimeError):
    """A step produced a NaN/Inf loss, gradient or parameter (train.nan_policy='stop')."""


class Preemption:
    """A flag set by SIGTERM, checked once per step (the handler itself does no work)."""

    def __init__(self):
        self.requested = False

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield self  # signal handlers can only be set from the main thread
            return
        previous = signal.signal(signal.SIGTERM, self._handle)
        try:
            yield self
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _handle(self, signum, frame) -> None:
        self.requested = True


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
