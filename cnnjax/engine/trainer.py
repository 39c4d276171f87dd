"""One `train_and_evaluate(config, workdir)` for every task; tests and notebooks import it.

Phases: set up (`cnnjax.engine.build`: validate, open data, build task and model) ->
initialise or resume -> train loop (log, evaluate, checkpoint) -> finish. Steps are the
generic pure functions of `cnnjax.engine.step`, jitted once over a ('data',) mesh; what is
specific to a task (loss, metrics, pictures) comes from `run.task`.
"""

import collections
import dataclasses
import time

import jax
import numpy as np

from cnnjax.data import pipeline
from cnnjax.engine import diagnostics, guards
from cnnjax.engine.build import Run, Steps, build, compile_steps, init_state, setup
from cnnjax.engine.checkpointing import Checkpointer, abstract_like
from cnnjax.engine.evaluation import evaluate
from cnnjax.engine.prefetch import DevicePrefetch
from cnnjax.engine.step import WEIGHT
from cnnjax.errors import EXIT_PREEMPTED
from cnnjax.logs.console import ProgressDisplay, format_duration, startup_summary
from cnnjax.logs.writers import MetricWriter, read_metrics
from cnnjax.runtime import sharding

__all__ = ["Run", "Steps", "build", "compile_steps", "evaluate", "init_state", "setup",
           "train_and_evaluate"]  # fmt: skip

MAX_IN_FLIGHT = 2  # train steps dispatched ahead of the one the loop waits for


def _summary(run: Run, state, start_step: int) -> dict:
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    c = run.config
    return {
        "devices": f"{run.mesh.size} x {jax.devices()[0].device_kind} "
        f"({jax.process_count()} process(es))",
        "model": f"{c.model.name}  {n_params:,} parameters",
        "task": f"{run.task.name}: {run.task.summary()}",
        "data": f"{run.info.name}: {run.info.num_train:,} train / {run.info.num_eval:,} eval, "
        f"{c.data.image_size}px, batch {c.data.batch_size}",
        "steps": f"{run.num_steps:,} ({run.num_steps * c.data.batch_size / run.info.num_train:.1f}"
        f" epochs), resuming at {start_step}"
        if start_step
        else f"{run.num_steps:,} "
        f"({run.num_steps * c.data.batch_size / run.info.num_train:.1f} epochs)",
        "workdir": str(run.workdir),
        **_init_summary(c),
    }


def _init_summary(config) -> dict:
    """The start-up line of a pretrained start (config group `init`), if any."""
    init = config.get("init")
    if init is None or not init.checkpoint:
        return {}
    where = f" into '{init.prefix}'" if init.get("prefix") else ""
    model = init.get("model") or config.model.name
    kept = f"; fresh: {', '.join(init.exclude)}" if init.exclude else ""
    frozen = "; backbone frozen (only the fresh part trains)" if init.freeze_backbone else ""
    return {"init": f"{init.checkpoint} as {model}{where}{kept}{frozen}"}


def window_metrics(window: list[dict]) -> dict:
    """Step metrics of a log window -> each averaged with its weights (exact ratios of sums:
    a term counted over 3 boxes in one step and 30 in the next weighs 1:10)."""
    host = jax.device_get(window)
    out = {}
    for k in host[0]:
        if k.startswith(WEIGHT):
            continue
        values = np.asarray([m[k] for m in host], np.float64)
        weights = np.asarray([m.get(WEIGHT + k, 1.0) for m in host], np.float64)
        total = weights.sum()
        out[k] = float((values * weights).sum() / total) if total > 0 else float("nan")
    return out


def train_and_evaluate(config, workdir) -> dict:
    """Trains (or resumes) the run in `workdir`; returns the final eval metrics.

    Raises guards.Preempted after saving a checkpoint on SIGTERM, guards.NonFiniteError on a
    NaN/Inf step (train.nan_policy 'stop'), ConfigError if checkpoints exist but none restores.
    """
    preemption = guards.Preemption(exit_code=EXIT_PREEMPTED)
    with preemption.installed():  # SIGTERM before the first step: exit at once
        return _train_and_evaluate(config, workdir, preemption)


def _train_and_evaluate(config, workdir, preemption) -> dict:
    run = setup(config, workdir)
    c = run.config
    ckpt = Checkpointer(
        run.workdir / "checkpoints",
        keep=c.train.keep_checkpoints,
        best_metric=run.best[0],
        best_mode=run.best[1],
        tidy=run.is_main,
    )
    writer = records = None
    peer_failed = False
    try:
        state = init_state(run)
        data_iter = iter(train_batches(run))
        start, state, skipped = _resume(run, ckpt, state, data_iter)
        put = lambda host: sharding.to_global(host, run.mesh)
        data_iter = DevicePrefetch(data_iter, put, depth=c.data.device_prefetch)
        steps = compile_steps(run)
        if start >= run.num_steps:
            last = _last_eval(run.workdir, start)
            if last is not None:
                if run.is_main:
                    print(f"run in {run.workdir} already finished at step {start}; nothing to do")
                return last
        writer = MetricWriter(run.workdir, enabled=run.is_main)
        if start >= run.num_steps:  # preempted during the final evaluation: finish it
            final = evaluate(run, steps, state, samples=_samples(run, start))
            writer.write(start, "eval", final)
            if c.train.ema_decay > 0:
                writer.write(start, "eval_ema", evaluate(run, steps, state.ema()))
            return final
        if c.train.record_log:
            records = guards.RecordLog(run.workdir, start, jax.process_index())
        finite = guards.FiniteCheck(c.train.nan_policy, skipped)
        guard = _Guard(preemption, finite, records)
        startup_summary(_summary(run, state, start), enabled=run.is_main)
        return _loop(run, state, data_iter, steps, ckpt, writer, start, guard)
    except jax.errors.JaxRuntimeError as e:
        if jax.process_count() == 1:
            raise
        # A collective failed: another process of this run died. Waiting for this process's
        # async save would block on the dead peer; restart resumes from the last whole one.
        peer_failed = True
        raise guards.PeerFailed(jax.process_index(), jax.process_count(), e) from e
    finally:
        if not peer_failed:
            ckpt.close()  # waits for async saves; raises if one failed
        for f in (writer, records):
            if f is not None:
                f.close()


@dataclasses.dataclass
class _Guard:
    preemption: guards.Preemption
    finite: guards.FiniteCheck
    records: guards.RecordLog | None


def _resume(run: Run, ckpt: Checkpointer, state, data_iter):
    """-> (start step, state, skipped steps so far): the newest good checkpoint, or the
    fresh `state` at 0. The data iterator resumes right after the last trained batch."""
    found = ckpt.restore_latest(abstract_like(state, sharding.replicated(run.mesh)))
    if found is None:
        return 0, state, 0
    step, state, data_state, extra = found
    data_iter.set_state(data_state)
    return step, state, int(extra.get("skipped_steps", 0))


def _save(ckpt, step, state, data_iter, guard, metrics=None) -> None:
    guard.finite.flush()  # never write a checkpoint of a non-finite state
    extra = {"skipped_steps": guard.finite.skipped}
    ckpt.save(step, state, data_iter.get_state(), metrics=metrics, extra=extra)


def _loop(run, state, data_iter, steps, ckpt, writer, start, guard) -> dict:
    c = run.config
    progress = ProgressDisplay(run.num_steps, start, enabled=run.is_main)
    window, t_start, eval_metrics, saved, evaluated = [], time.perf_counter(), {}, start, None
    in_flight = collections.deque()
    # One process: our SIGTERM flag. Several: only Orbax's preemption sync point, which every
    # process reaches at the same step (a local flag would split the processes' control flow).
    single = jax.process_count() == 1
    preempted = (lambda: guard.preemption.requested) if single else (lambda: False)
    guard.preemption.mark_progress()  # from here on SIGTERM saves before exiting
    try:
        for step in range(start + 1, run.num_steps + 1):
            host_batch, batch = next(data_iter)
            state, metrics = steps.train(state, batch)
            data_iter.fill()  # the next batches' read and transfer overlap this step
            # At most MAX_IN_FLIGHT steps queued: the loop must not run far ahead of the
            # device, or a SIGTERM save would first wait for every queued step.
            in_flight.append(metrics["loss"])
            if len(in_flight) > MAX_IN_FLIGHT:
                in_flight.popleft().block_until_ready()
            guard.finite.add(step, metrics.pop("nonfinite"), host_batch["index"])
            if guard.records is not None:
                guard.records.append(step, host_batch["index"])
            window.append(metrics)
            progress.step(step)
            final = step == run.num_steps
            if step % c.train.log_every_steps == 0 or step == run.num_steps:
                guard.finite.flush()
                logged = window_metrics(window)
                window = []
                logged["learning_rate"] = float(run.schedule(step - 1))
                logged["steps_per_sec"] = progress.rate(step)
                if c.train.nan_policy == "skip":
                    logged["skipped_steps"] = guard.finite.skipped
                writer.write(step, "train", logged)
                progress.log(step, {k: logged[k] for k in run.task.progress_keys if k in logged})
            if c.train.diagnostics_every_steps and step % c.train.diagnostics_every_steps == 0:
                diag = jax.device_get(steps.diagnose(state, batch))
                writer.write(step, diagnostics.SPLIT, {k: float(v) for k, v in diag.items()})
            if (step % c.eval.every_steps == 0 or final) and not preempted():
                guard.finite.flush()
                eval_metrics = evaluate(
                    run, steps, state, stop=preempted, samples=_samples(run, step)
                )
                if eval_metrics is None:  # SIGTERM during eval: save now, evaluate on resume
                    _save(ckpt, step, state, data_iter, guard)
                    ckpt.finish()
                    raise guards.Preempted(step)
                writer.write(step, "eval", eval_metrics)
                evaluated = step
                if c.train.ema_decay > 0:
                    ema_metrics = evaluate(run, steps, state.ema(), stop=preempted)
                    if ema_metrics is not None:
                        writer.write(step, "eval_ema", ema_metrics)
                progress.message(f"eval @ {step}: {_format(eval_metrics)}")
            if step % c.train.checkpoint_every_steps == 0 or final:
                metrics = eval_metrics if evaluated == step else None
                _save(ckpt, step, state, data_iter, guard, metrics=metrics)
                saved = step
            if preempted() or ckpt.reached_preemption(step):
                if saved != step:
                    _save(ckpt, step, state, data_iter, guard)
                ckpt.finish()
                raise guards.Preempted(step)
    finally:
        progress.close()
    elapsed = time.perf_counter() - t_start
    if run.is_main:
        best = run.best[0]
        print(
            f"done: {run.num_steps} steps in {format_duration(elapsed)}; "
            f"eval {best} {eval_metrics.get(best, float('nan')):.4f}",
            flush=True,
        )
    return eval_metrics


def train_batches(run, workers: int | None = None):
    """The endless, checkpointable stream of this process's train batches (`workers`: grain
    worker processes, default config.data.workers)."""
    c = run.config
    return pipeline.train_dataset(
        run.train_source,
        run.task.train_preprocess,
        run.task.features(),
        batch_size=c.data.batch_size,
        seed=c.train.seed,
        read_threads=c.data.read_threads,
        prefetch=c.data.prefetch,
        workers=c.data.workers if workers is None else workers,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )


def _samples(run, step: int):
    """Where an evaluation at `step` draws its examples (None when eval.num_samples is 0)."""
    return run.workdir / "samples" / f"step_{step:07d}.png" if run.config.eval.num_samples else None


def _format(metrics: dict) -> str:
    """Float metrics, 4 decimals (3 significant digits in e-notation below 1e-3)."""
    return " ".join(
        f"{k} {v:.4f}" if v == 0 or abs(v) >= 1e-3 else f"{k} {v:.3g}"
        for k, v in metrics.items()
        if isinstance(v, float)
    )


def _last_eval(workdir, step: int) -> dict | None:
    """The eval metrics logged at `step`, or None if the run stopped before logging them."""
    rows = [r for r in read_metrics(workdir) if r.get("split") == "eval" and r["step"] == step]
    if not rows:
        return None
    return {k: v for k, v in rows[-1].items() if k not in ("step", "split")}
