"""Everything a run is built from its config: task, model, data, optimizer, compiled steps.

`build` (no side effects: the evaluate CLI uses it too) and `setup` (build, then check the
workdir, write config.json and dataset_info.json, enable the compilation cache) do every
check that can fail on bad input before anything compiles. No task is named here: the
registry in `cnnjax.tasks` picks it from `config.task.name`.
"""

import dataclasses
import functools
from pathlib import Path
from typing import NamedTuple

import jax

from cnnjax import models, tasks
from cnnjax.config import validate
from cnnjax.config import workdir as wd
from cnnjax.data import open_sources
from cnnjax.data.transforms import Augment
from cnnjax.engine import diagnostics, guards, init_from, optim
from cnnjax.engine import step as steps
from cnnjax.engine.state import create_state
from cnnjax.errors import ConfigError
from cnnjax.models import rewrite
from cnnjax.runtime import compile_cache, sharding


@dataclasses.dataclass
class Run:
    """Everything set up before the first step."""

    config: object
    workdir: Path | None
    mesh: object
    info: object
    task: object
    train_source: object
    eval_source: object
    model: object
    best: tuple[str, str]  # (eval metric kept by retention, 'max' | 'min')
    tx: object = None
    schedule: object = None
    num_steps: int = 0

    @property
    def is_main(self) -> bool:
        return jax.process_index() == 0


def build_task(config, info):
    """The config's task for a dataset described by `info` (ConfigError if it cannot use it)."""
    return tasks.create(
        config.task.name,
        info,
        image_size=config.data.image_size,
        augment=Augment(**config.data.aug.to_dict()),
        **config.task.kwargs.to_dict(),
    )


def build_model(config, task, *, speed: bool = True):
    """The registry model of config.model, built with what the task gives it; `speed`
    applies the train group's compute dtype, convolution and BatchNorm choices."""
    given = task.model_kwargs()
    clash = sorted(set(given) & set(config.model.kwargs))
    if clash:
        raise ConfigError(
            f"model.kwargs {clash} are set by task '{task.name}' from the dataset; remove them"
        )
    model = models.create(config.model.name, **given, **config.model.kwargs.to_dict())
    return rewrite.apply_to_model(model, config.train) if speed else model


def num_train_steps(config, num_train: int) -> int:
    if config.train.num_epochs > 0:
        return config.train.num_epochs * max(1, num_train // config.data.batch_size)
    return config.train.num_steps


def build(config, mesh=None) -> Run:
    """Opens the data and builds task and model, checking everything on the way.
    `mesh` defaults to all devices on a ('data',) axis."""
    mesh = sharding.data_mesh() if mesh is None else mesh
    validate.check_values(config, jax.process_count(), mesh.size)
    validate.check_speed(config.train, config.data.batch_size, mesh.size)
    init_from.check(config)
    train_src, eval_src, info = open_sources(config.data)
    task = build_task(config, info)
    model = build_model(config, task)
    validate.check_model_input(model, task.init_inputs())
    best = validate.check_eval_metric(config, task)
    return Run(config, None, mesh, info, task, train_src, eval_src, model, best)


def setup(config, workdir, mesh=None) -> Run:
    """`build`, then the workdir: refuse an incompatible run, write config and dataset info,
    enable the compilation cache; the optimizer and step count."""
    run = build(config, mesh)
    run.workdir = Path(workdir)
    if run.is_main:
        wd.make(run.workdir)
    main = run.is_main
    diffs = wd.check_and_write(run.workdir, config, write=main)
    if main:
        wd.write_info(run.workdir, run.info)
    if diffs and main:
        print("resuming with harmless config changes: " + "; ".join(diffs), flush=True)
        wd.write_config(run.workdir, config)
    compile_cache.enable(config.train.compilation_cache_dir, run.workdir)
    run.num_steps = num_train_steps(config, run.info.num_train)
    run.tx, run.schedule = optim.create(config.optim, run.num_steps)
    return run


def init_state(run: Run):
    """Fresh train state, replicated over the mesh (identical on every process)."""
    c = run.config
    init = functools.partial(
        create_state,
        run.model,
        run.tx,
        init_inputs=run.task.init_inputs(),
        ema=c.train.ema_decay > 0,
    )
    rng = jax.random.PRNGKey(c.train.seed)
    state = jax.jit(init, out_shardings=sharding.replicated(run.mesh))(rng)
    return init_from.apply_init(c, state)  # pretrained weights from config.init, if any


class Steps(NamedTuple):
    """The jitted steps of a run: train (donates the state), eval and predict (per-example
    outputs, sharded like the batch)."""

    train: object
    eval: object
    predict: object
    diagnose: object  # per-layer diagnostics (engine/diagnostics.py), compiled on first use


def compile_steps(run: Run) -> Steps:
    repl, data = sharding.replicated(run.mesh), sharding.batch_sharded(run.mesh)
    t = run.config.train
    step_fn = functools.partial(
        steps.train_step,
        task=run.task,
        grad_accum_steps=t.grad_accum_steps,
        ema_decay=t.ema_decay,
    )
    train_step = jax.jit(
        functools.partial(
            guards.guarded_step, step_fn=step_fn, skip_nonfinite=t.nan_policy == "skip"
        ),
        in_shardings=(repl, data),
        out_shardings=(repl, repl),
        donate_argnums=0,
    )
    eval_fn = functools.partial(steps.eval_step, task=run.task)
    eval_step = jax.jit(eval_fn, in_shardings=(repl, data), out_shardings=data)
    predict_fn = functools.partial(steps.predict_step, task=run.task)
    predict_step = jax.jit(predict_fn, in_shardings=(repl, data), out_shardings=data)
    diagnose_fn = functools.partial(diagnostics.diagnostics_step, task=run.task)
    diagnose = jax.jit(diagnose_fn, in_shardings=(repl, data), out_shardings=repl)
    return Steps(train_step, eval_step, predict_step, diagnose)
