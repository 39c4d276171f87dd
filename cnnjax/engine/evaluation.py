"""One evaluation loop for every task: padded batches over the whole split, the task's
per-example outputs accumulated exactly on each process, merged across processes, and a
PNG of the first examples with their predictions."""

from pathlib import Path

import jax
import numpy as np

from cnnjax.config import validate
from cnnjax.data import pipeline
from cnnjax.runtime import sharding


def eval_batches(run, source=None, max_examples=None):
    """-> (grain dataset of this process's share of the padded eval batches, num batches)."""
    c = run.config.data
    return pipeline.eval_dataset(
        run.eval_source if source is None else source,
        run.task.eval_preprocess,
        run.task.features(),
        global_batch=validate.eval_batch(run.config),
        max_examples=c.max_eval_examples if max_examples is None else max_examples,
        read_threads=c.read_threads,
        prefetch=c.prefetch,
        workers=c.workers,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )


def merge_processes(task, acc):
    """The accumulator of the whole split: this process's merged with every other's."""
    if jax.process_count() == 1:
        return acc
    total = task.metric()
    for state in sharding.allgather_ragged(acc.state()):
        total.merge_state(state)
    return total


def evaluate(run, steps, state, *, source=None, max_examples=None, stop=None, samples=None):
    """Exact metrics of the task over the (padded) eval split -> dict, or None if `stop()`
    became true (preemption) before the split was done. `samples`: a PNG path for the first
    `eval.num_samples` real examples of process 0 drawn with their predictions; the
    accumulator's own files (e.g. detection's per-class AP table and PR curves) go next to
    it, named after it."""
    ds, _ = eval_batches(run, source, max_examples)
    acc = run.task.metric()
    for i, batch in enumerate(ds):
        if stop is not None and stop():
            return None
        global_batch = sharding.to_global(batch, run.mesh)
        acc.add(sharding.local_rows(steps.eval(state, global_batch)))
        if i == 0 and samples is not None and run.config.eval.num_samples > 0:
            draw_samples(run, steps, state, batch, global_batch, Path(samples))
    total = merge_processes(run.task, acc)
    metrics = total.result()
    if samples is not None and run.is_main:
        total.write_files(Path(samples).parent, Path(samples).stem)
    return metrics


def draw_samples(run, steps, state, batch: dict, global_batch, path: Path) -> None:
    """Writes the task's picture of this batch's first real examples (every process runs
    the prediction, a collective; process 0 draws its own rows)."""
    predicted = sharding.local_rows(steps.predict(state, global_batch))
    if not run.is_main:
        return
    keep = np.flatnonzero(batch["mask"] > 0)[: run.config.eval.num_samples]
    if not len(keep):
        return
    rows = {k: np.asarray(v)[keep] for k, v in batch.items()}
    rows = jax.device_get(run.task.device_preprocess(rows, None))  # what the model saw
    prediction = run.task.Prediction(**{k: np.asarray(v)[keep] for k, v in predicted.items()})
    fig = run.task.visualize(rows, prediction)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    tmp.replace(path)
