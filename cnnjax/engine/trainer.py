"""One `train_and_evaluate(config, workdir)` for every run; tests and notebooks import it.

Phases: set up (validate, open data, build model) -> initialise or resume -> train loop
(log, evaluate, checkpoint) -> finish. Steps are the pure functions of `cnnjax.tasks`,
jitted once over a ('data',) mesh.
"""

import collections
import dataclasses
import functools
import time
from pathlib import Path

import jax
import numpy as np

from cnnjax import models
from cnnjax.config import validate
from cnnjax.config import workdir as wd
from cnnjax.data import open_sources, pipeline
from cnnjax.engine import guards, init_from, optim
from cnnjax.engine.checkpointing import Checkpointer, abstract_like
from cnnjax.errors import EXIT_PREEMPTED
from cnnjax.logs.console import ProgressDisplay, format_duration, startup_summary
from cnnjax.logs.writers import MetricWriter
from cnnjax.metrics.classification import Sums
from cnnjax.models import rewrite
from cnnjax.runtime import compile_cache, sharding
from cnnjax.tasks import classification as task

MAX_IN_FLIGHT = 2  # train steps dispatched ahead of the one the loop waits for


@dataclasses.dataclass
class Run:
    """Everything set up before the first step."""

    config: object
    workdir: Path
    mesh: object
    info: object
    train_source: object
    eval_source: object
    model: object
    tx: object
    schedule: object
    num_steps: int
    is_main: bool


def num_train_steps(config, num_train: int) -> int:
    if config.train.num_epochs > 0:
        return config.train.num_epochs * max(1, num_train // config.data.batch_size)
    return config.train.num_steps


def setup(config, workdir, mesh=None) -> Run:
    """All checks that can fail on bad input happen here, before anything compiles.

    `mesh` defaults to all devices on a ('data',) axis.
    """
    workdir = Path(workdir)
    mesh = sharding.data_mesh() if mesh is None else mesh
    validate.check_values(config, jax.process_count(), mesh.size)
    train_src, eval_src, info = open_sources(config.data)
    validate.check_speed(config.train, config.data.batch_size, mesh.size)
    model = models.create(config.model.name, num_classes=info.num_classes, **config.model.kwargs)
    model = rewrite.apply_to_model(model, config.train)  # compute dtype, conv implementation
    validate.check_model_input(model, config.data.image_size, info.image_shape[-1])
    diffs = wd.check_and_write(workdir, config, write=jax.process_index() == 0)
    if diffs and jax.process_index() == 0:
        print("resuming with harmless config changes: " + "; ".join(diffs), flush=True)
        wd.write_config(workdir, config)
    compile_cache.enable(config.train.compilation_cache_dir, workdir)
    num_steps = num_train_steps(config, info.num_train)
    tx, schedule = optim.create(config.optim, num_steps)
    return Run(
        config=config,
        workdir=workdir,
        mesh=mesh,
        info=info,
        train_source=train_src,
        eval_source=eval_src,
        model=model,
        tx=tx,
        schedule=schedule,
        num_steps=num_steps,
        is_main=jax.process_index() == 0,
    )


def init_state(run: Run):
    """Fresh train state, replicated over the mesh (identical on every process)."""
    c = run.config
    shape = (c.data.image_size, c.data.image_size, run.info.image_shape[-1])
    init = functools.partial(
        task.create_state, run.model, run.tx, image_shape=shape, ema=c.train.ema_decay > 0
    )
    rng = jax.random.PRNGKey(c.train.seed)
    state = jax.jit(init, out_shardings=sharding.replicated(run.mesh))(rng)
    return init_from.apply_init(c, state)  # pretrained weights from config.init, if any


def compile_steps(run: Run, state):
    repl, data = sharding.replicated(run.mesh), sharding.batch_sharded(run.mesh)
    step_fn = functools.partial(
        task.train_step,
        label_smoothing=run.config.train.label_smoothing,
        grad_accum_steps=run.config.train.grad_accum_steps,
        ema_decay=run.config.train.ema_decay,
        aux_loss_weight=run.config.model.aux_loss_weight,
    )
    skip = run.config.train.nan_policy == "skip"
    train_step = jax.jit(
        functools.partial(guards.guarded_step, step_fn=step_fn, skip_nonfinite=skip),
        in_shardings=(repl, data),
        out_shardings=(repl, repl),
        donate_argnums=0,
    )
    eval_step = jax.jit(task.eval_step, in_shardings=(repl, data), out_shardings=repl)
    return train_step, eval_step


def evaluate(run: Run, eval_step, state, stop=None) -> dict | None:
    """Exact metrics over the whole (padded) eval split; None if `stop()` became true
    (preemption) before the split was done."""
    ds, _ = pipeline.eval_dataset(
        run.eval_source,
        run.config.data,
        run.info,
        global_batch=validate.eval_batch(run.config),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    sums = Sums()
    for batch in ds:
        if stop is not None and stop():
            return None
        sums.add(eval_step(state, sharding.to_global(batch, run.mesh)))
    return sums.classification()


def _summary(run: Run, state, start_step: int) -> dict:
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    c = run.config
    return {
        "devices": f"{run.mesh.size} x {jax.devices()[0].device_kind} "
        f"({jax.process_count()} process(es))",
        "model": f"{c.model.name}  {n_params:,} parameters",
        "data": f"{run.info.name}: {run.info.num_train:,} train / {run.info.num_eval:,} eval, "
        f"{run.info.num_classes} classes, {c.data.image_size}px, batch {c.data.batch_size}",
        "steps": f"{run.num_steps:,} ({run.num_steps * c.data.batch_size / run.info.num_train:.1f}"
        f" epochs), resuming at {start_step}"
        if start_step
        else f"{run.num_steps:,} "
        f"({run.num_steps * c.data.batch_size / run.info.num_train:.1f} epochs)",
        "workdir": str(run.workdir),
    }


def _mean_metrics(window: list[dict]) -> dict:
    host = jax.device_get(window)
    return {k: float(np.mean([m[k] for m in host])) for k in host[0]}


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
        best_metric=c.eval.best_metric,
        tidy=run.is_main,
    )
    writer = records = None
    peer_failed = False
    try:
        state = init_state(run)
        train_ds = pipeline.train_dataset(
            run.train_source,
            c.data,
            run.info,
            seed=c.train.seed,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
        data_iter = iter(train_ds)
        start, state, skipped = _resume(run, ckpt, state, data_iter)
        train_step, eval_step = compile_steps(run, state)
        if start >= run.num_steps:
            last = _last_eval(run.workdir, start)
            if last is not None:
                if run.is_main:
                    print(f"run in {run.workdir} already finished at step {start}; nothing to do")
                return last
        writer = MetricWriter(run.workdir, enabled=run.is_main)
        if start >= run.num_steps:  # preempted during the final evaluation: finish it
            final = evaluate(run, eval_step, state)
            writer.write(start, "eval", final)
            if c.train.ema_decay > 0:
                writer.write(start, "eval_ema", evaluate(run, eval_step, state.ema()))
            return final
        if c.train.record_log:
            records = guards.RecordLog(run.workdir, start, jax.process_index())
        finite = guards.FiniteCheck(c.train.nan_policy, skipped)
        guard = _Guard(preemption, finite, records)
        startup_summary(_summary(run, state, start), enabled=run.is_main)
        return _loop(run, state, data_iter, train_step, eval_step, ckpt, writer, start, guard)
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


def _loop(run, state, data_iter, train_step, eval_step, ckpt, writer, start, guard) -> dict:
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
            host_batch = next(data_iter)
            state, metrics = train_step(state, sharding.to_global(host_batch, run.mesh))
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
                logged = _mean_metrics(window)
                window = []
                logged["learning_rate"] = float(run.schedule(step - 1))
                logged["steps_per_sec"] = progress.rate(step)
                if c.train.nan_policy == "skip":
                    logged["skipped_steps"] = guard.finite.skipped
                writer.write(step, "train", logged)
                progress.log(step, {k: logged[k] for k in ("loss", "accuracy")})
            if (step % c.eval.every_steps == 0 or final) and not preempted():
                guard.finite.flush()
                eval_metrics = evaluate(run, eval_step, state, stop=preempted)
                if eval_metrics is None:  # SIGTERM during eval: save now, evaluate on resume
                    _save(ckpt, step, state, data_iter, guard)
                    ckpt.finish()
                    raise guards.Preempted(step)
                writer.write(step, "eval", eval_metrics)
                evaluated = step
                if c.train.ema_decay > 0:
                    ema_metrics = evaluate(run, eval_step, state.ema(), stop=preempted)
                    if ema_metrics is not None:
                        writer.write(step, "eval_ema", ema_metrics)
                progress.message(
                    f"eval @ {step}: "
                    + " ".join(
                        f"{k} {v:.4f}" for k, v in eval_metrics.items() if k != "num_examples"
                    )
                )
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
        print(
            f"done: {run.num_steps} steps in {format_duration(elapsed)}; "
            f"eval accuracy {eval_metrics.get('accuracy', float('nan')):.4f}",
            flush=True,
        )
    return eval_metrics


def _last_eval(workdir, step: int) -> dict | None:
    """The eval metrics logged at `step`, or None if the run stopped before logging them."""
    from cnnjax.logs.writers import read_metrics

    rows = [r for r in read_metrics(workdir) if r.get("split") == "eval" and r["step"] == step]
    if not rows:
        return None
    return {k: v for k, v in rows[-1].items() if k not in ("step", "split")}
