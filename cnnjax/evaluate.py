"""Command line: python -m cnnjax.evaluate --workdir=DIR [--step=N] [--split=test].

Prints one JSON object of exact metrics over the whole eval split (key `accuracy`).
"""

import json
import sys

from absl import app, flags

from cnnjax.errors import EXIT_BAD_INPUT, ConfigError

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A cnnjax run directory.")
flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
flags.DEFINE_string("split", None, "Split to evaluate (default: the config's data.eval_split).")
flags.DEFINE_integer("batch_size", 256, "Evaluation batch size.")
flags.mark_flags_as_required(["workdir"])


def evaluate_workdir(workdir, step=None, split=None, batch_size=256) -> dict:
    import jax

    from cnnjax import notebook
    from cnnjax.data import pipeline
    from cnnjax.data.sources import _builder, _source, resolve_data_dir
    from cnnjax.losses.classification import cross_entropy
    from cnnjax.metrics.classification import Sums, eval_sums

    run = notebook.load(workdir, step=step)
    cfg = run.config
    split = split or cfg.data.eval_split
    source = _source(_builder(cfg.data.name, resolve_data_dir(cfg.data.data_dir)), split)
    data_cfg = cfg.data.copy_and_resolve_references()
    data_cfg.max_eval_examples = 0  # always the whole split
    ds, _ = pipeline.eval_dataset(source, data_cfg, run.info, global_batch=batch_size)

    @jax.jit
    def sums_fn(variables, batch):
        logits, _ = run.model.apply(variables, batch["image"], train=False)
        return eval_sums(
            logits, batch["label"], batch["mask"], cross_entropy(logits, batch["label"])
        )

    sums = Sums()
    for batch in ds:
        sums.add(sums_fn(run.variables, batch))
    return {"workdir": str(workdir), "step": run.step, "split": split, **sums.classification()}


def main(argv):
    del argv
    from absl import logging

    logging.set_verbosity(logging.WARNING)
    try:
        result = evaluate_workdir(FLAGS.workdir, FLAGS.step, FLAGS.split, FLAGS.batch_size)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    print(json.dumps(result))


if __name__ == "__main__":
    import cnnjax  # noqa: F401

    app.run(main)
