"""Orbax checkpoints of the train state and the grain iterator, in `workdir/checkpoints/<step>`.

Retention keeps the latest `keep` checkpoints plus the best one by an eval metric; the
newest is always among the latest, so it is never deleted.

Integrity: every checkpoint carries a `meta` item with a CRC32 of each state array, checked
on restore. A checkpoint that fails to restore or verify is renamed `<step>.corrupt-<time>`
(never deleted) with a warning and the previous one is tried; saves cut short by a kill
(`<step>.orbax-checkpoint-tmp*`) are renamed `<name>.partial-<time>` before Orbax looks.
"""

import sys
import time
import zlib
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm

from cnnjax.errors import ConfigError

_TMP_MARK = ".orbax-checkpoint-tmp"


class CheckpointsUnreadable(ConfigError):
    """Checkpoints exist but none restores: the run must not silently start from scratch."""


class Checkpointer:
    """`tidy=True` (the training process 0 only) lets it rename partial and corrupt steps;
    readers such as notebooks (`create=False`, `read`) leave the directory exactly as they
    found it. Without `best_metric` retention keeps only the latest `keep`."""

    def __init__(
        self,
        directory,
        *,
        keep: int = 1_000_000,
        best_metric: str | None = None,
        best_mode: str = "max",
        tidy=False,
        create: bool = True,
    ):
        self.directory = Path(directory).absolute()  # Orbax needs absolute paths
        self.tidy = tidy
        if tidy:
            self._set_aside_partial_saves()
        policies = [cm.LatestN(n=max(1, keep))]
        if best_metric is not None:
            # BestN keeps the n best by get_metric_fn; reverse=True ranks lower as better.
            policies.append(
                cm.BestN(
                    get_metric_fn=lambda m: m[best_metric],
                    reverse=best_mode == "min",
                    n=1,
                    keep_checkpoints_without_metrics=False,
                )
            )
        policy = cm.AnyPreservationPolicy(policies)
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy, enable_async_checkpointing=True, create=create
        )
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "data", "meta")
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state, data_state: dict, metrics=None, extra=None) -> None:
        """Starts an async save; the host copy (and checksums) are taken before it returns.

        `extra`: a JSON-able dict stored beside the state (e.g. counters), see `restore`.
        """
        meta = {"step": int(step), "checksums": checksums(state), "extra": extra or {}}
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave(data_state),
                meta=ocp.args.JsonSave(meta),
            ),
            metrics=metrics,
        )

    def restore(self, step: int, abstract_state):
        """-> (state placed like `abstract_state`, data iterator state, extra dict).

        Raises ValueError if the arrays do not match the checksums written with them.
        """
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data=ocp.args.JsonRestore(),
                meta=ocp.args.JsonRestore(),
            ),
        )
        meta = restored["meta"]
        if not isinstance(meta, dict) or meta.get("step") != step:
            raise ValueError(f"checkpoint {step}: meta item missing or names another step")
        bad = _mismatches(meta.get("checksums", {}), checksums(restored["state"]))
        if bad:
            raise ValueError(f"checkpoint {step}: checksum mismatch in {', '.join(bad[:5])}")
        return restored["state"], restored["data"], meta.get("extra", {})

    def restore_latest(self, abstract_state):
        """-> (step, state, data state, extra) of the newest checkpoint that verifies, or None
        when there is no checkpoint. Bad ones are set aside (with `tidy`) with a warning.

        Raises ConfigError if a checkpoint holds a state of another structure (the optimizer
        or model changed), CheckpointsUnreadable if checkpoints exist but none restores.
        """
        failures = []
        for step in reversed(self.all_steps()):
            try:
                return (step, *self.restore(step, abstract_state))
            except Exception as e:  # noqa: BLE001 - any failure makes this checkpoint unusable
                self._check_structure(step, abstract_state)
                failures.append(f"step {step}: {type(e).__name__}: {_first_line(e)}")
                self._set_aside(self.directory / str(step), "corrupt", failures[-1])
        if failures:
            raise CheckpointsUnreadable(
                f"no checkpoint in {self.directory} can be restored ({'; '.join(failures)}). "
                "They were renamed *.corrupt-*; move one back or use another --workdir."
            )
        return None

    def restore_state(self, step: int, abstract_state):
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
        )
        return restored["state"]

    def read(self, step: int | None = None):
        """For readers (evaluate, notebooks): -> (step, state as saved: a dict of numpy
        arrays), verified against its checksums. Without `step`, the newest checkpoint that
        verifies; a bad one is skipped with a warning, never renamed. ConfigError if `step`
        does not exist or no checkpoint verifies."""
        steps = self.all_steps() if self.directory.is_dir() else []
        if not steps:
            raise ConfigError(f"{self.directory} holds no checkpoint yet")
        if step is not None and step not in steps:
            raise ConfigError(f"no checkpoint of step {step} in {self.directory}; steps: {steps}")
        failures = []
        for s in [step] if step is not None else reversed(steps):
            try:
                return s, self._read_verified(s)
            except Exception as e:  # noqa: BLE001 - any failure makes this checkpoint unusable
                failures.append(f"step {s}: {type(e).__name__}: {_first_line(e)}")
                print(f"warning: checkpoint {s} cannot be used ({failures[-1]})", file=sys.stderr)
        raise ConfigError(f"no checkpoint in {self.directory} verifies ({'; '.join(failures)})")

    def _read_verified(self, step: int) -> dict:
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(restore_args=_numpy_restore_args(self, step)),
                meta=ocp.args.JsonRestore(),
            ),
        )
        meta, state = restored["meta"], restored["state"]
        if not isinstance(meta, dict) or meta.get("step") != step:
            raise ValueError(f"checkpoint {step}: meta item missing or names another step")
        bad = _mismatches(meta.get("checksums", {}), checksums(state))
        if bad:
            raise ValueError(f"checkpoint {step}: checksum mismatch in {', '.join(bad[:5])}")
        return state

    def reached_preemption(self, step: int) -> bool:
        """Orbax's multi-host preemption sync point (needs jax.distributed)."""
        return jax.process_count() > 1 and self.manager.reached_preemption(step)

    def finish(self) -> None:
        """Blocks until async saves are on disk; raises if one of them failed."""
        self.manager.wait_until_finished()
        self.manager.check_for_errors()

    def close(self) -> None:
        self.finish()
        self.manager.close()

    def _check_structure(self, step: int, abstract_state) -> None:
        """A readable checkpoint whose arrays differ from the target is a config problem,
        not corruption: raise instead of setting it aside."""
        try:
            tree = ocp.StandardCheckpointer().metadata(self.directory / str(step) / "state")
            saved = _signature(tree.item_metadata.tree)
        except Exception:  # noqa: BLE001 - unreadable metadata: treat as corrupt
            return
        if abstract_state is not None and saved != _signature(abstract_state):
            raise ConfigError(
                f"checkpoint {self.directory / str(step)} holds a train state of another "
                "structure (did optim.name, grad clipping or the model change?). Restore the "
                "config it was trained with, or use another --workdir."
            )

    def _set_aside_partial_saves(self) -> None:
        if not self.directory.is_dir():
            return
        for path in sorted(self.directory.iterdir()):
            if _TMP_MARK in path.name:
                self._set_aside(path, "partial", "an unfinished save (the run was killed)")
            elif path.name.isdigit() and not path.is_dir():
                self._set_aside(path, "corrupt", "a file where a step directory belongs")

    def _set_aside(self, path: Path, kind: str, why: str) -> None:
        if not self.tidy or not path.exists():
            return
        stamp = time.strftime("%Y%m%dT%H%M%S")
        name = path.name.split(_TMP_MARK)[0]
        target = path.with_name(f"{name}.{kind}-{stamp}")
        n = 1
        while target.exists():
            target, n = path.with_name(f"{name}.{kind}-{stamp}-{n}"), n + 1
        path.rename(target)
        print(f"warning: checkpoint {path} set aside as {target.name}: {why}", file=sys.stderr)
        if hasattr(self, "manager"):
            self.manager.reload()


def _numpy_restore_args(ckpt: Checkpointer, step: int):
    """Restore every saved array as a host numpy array (whatever devices wrote it)."""
    from absl import logging

    level = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)  # Orbax warns that an item has no own metadata file
    try:
        tree = ocp.StandardCheckpointer().metadata(ckpt.directory / str(step) / "state")
    finally:
        logging.set_verbosity(level)
    return jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree.item_metadata.tree)


def checksums(state) -> dict[str, int]:
    """{key path: CRC32 of the array's bytes} for every leaf (one local replica of each)."""
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    return {_path_name(p): zlib.crc32(_host_bytes(x)) for p, x in leaves}


def _path_name(path) -> str:
    keys = (getattr(k, "name", getattr(k, "key", getattr(k, "idx", k))) for k in path)
    return "/".join(str(k) for k in keys)


def _host_bytes(x) -> bytes:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        x = x.addressable_data(0)  # replicated state: every process holds the whole array
    return np.ascontiguousarray(np.asarray(x)).tobytes()


def _mismatches(saved: dict, restored: dict) -> list[str]:
    if set(saved) != set(restored):
        return [f"arrays {sorted(set(saved) ^ set(restored))[:5]} (saved vs restored)"]
    return [name for name, crc in saved.items() if restored[name] != crc]


def _signature(tree) -> list[tuple]:
    return sorted((tuple(x.shape), str(np.dtype(x.dtype))) for x in jax.tree.leaves(tree))


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else ""


def abstract_like(state, sharding):
    """ShapeDtypeStructs of `state` placed with `sharding` (a restore target)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), state)
