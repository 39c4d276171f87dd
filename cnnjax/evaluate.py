"""Command line: python -m cnnjax.evaluate --workdir=DIR [--step=N] [--split=test].

Runs the trainer's own evaluation of the run's task on the devices present, over the whole
split, and prints one JSON object of its metrics (classification: `accuracy`, ...). The
checkpoint is verified against its checksums first; a picture of the first examples with
their predictions goes to DIR/samples/evaluate_<split>_<step>.png.
"""

import json
import sys

from absl import app, flags

from cnnjax.errors import EXIT_BAD_INPUT, ConfigError

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A cnnjax run directory.")
flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest that verifies).")
flags.DEFINE_string("split", None, "Split to evaluate (default: the config's data.eval_split).")
flags.DEFINE_integer("batch_size", 0, "Evaluation batch size (default: the run's).")
flags.DEFINE_boolean("ema", False, "Evaluate the weight EMA (runs with train.ema_decay > 0).")
flags.mark_flags_as_required(["workdir"])


def evaluate_workdir(workdir, step=None, split=None, batch_size=0, ema=False) -> dict:
    """-> {'workdir', 'step', 'split', **the task's metrics over the whole split}."""
    from pathlib import Path

    import jax

    from cnnjax.config import workdir as wd
    from cnnjax.data import open_source
    from cnnjax.engine import build, evaluation
    from cnnjax.engine.checkpointing import Checkpointer
    from cnnjax.engine.state import TrainState
    from cnnjax.runtime import sharding

    config = wd.load_config(workdir)
    with config.unlocked():
        config.data.max_eval_examples = 0  # always the whole split
        if batch_size:
            config.data.eval_batch_size = batch_size
    run = build.build(config)
    split = split or config.data.eval_split
    source = open_source(config.data, split)
    ckpt = Checkpointer(Path(workdir) / "checkpoints", create=False)
    try:
        found, saved = ckpt.read(step)
    finally:
        ckpt.close()
    prefix = "ema_" if ema else ""
    if ema and not saved.get("ema_params"):
        raise ConfigError(f"{workdir} was trained without a weight EMA (train.ema_decay 0)")
    repl = sharding.replicated(run.mesh)
    put = lambda tree: jax.tree.map(lambda x: jax.device_put(x, repl), tree)
    state = TrainState(
        step=found,
        apply_fn=run.model.apply,
        params=put(saved[prefix + "params"]),
        batch_stats=put(saved.get(prefix + "batch_stats") or {}),
        tx=None,
        opt_state=None,
        rng=None,
    )
    run.workdir = Path(workdir)
    steps = build.compile_steps(run)
    samples = run.workdir / "samples" / f"evaluate_{split}_{found}.png"
    metrics = evaluation.evaluate(run, steps, state, source=source, samples=samples)
    return {"workdir": str(workdir), "step": int(found), "split": split, **metrics}


def main(argv):
    del argv
    from absl import logging

    logging.set_verbosity(logging.WARNING)
    try:
        result = evaluate_workdir(
            FLAGS.workdir, FLAGS.step, FLAGS.split, FLAGS.batch_size, FLAGS.ema
        )
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    print(json.dumps(result))


if __name__ == "__main__":
    import cnnjax  # noqa: F401

    app.run(main)
