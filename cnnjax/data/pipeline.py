"""grain pipelines: an endless, checkpointable train stream and padded, exact eval batches.

The pipeline knows no task: it reads records, hands each to the task's per-example
`preprocess` (with a numpy Generator that grain derives from the seed and the element's
position, for training), checks the result against the task's feature spec, and batches.
Each process reads its own interleaved share of every global batch
(`process_index::process_count`), so the union over processes equals the single-process
batch. Batches are dicts of numpy arrays [B, ...]: the spec's keys plus `index` [B] int64
(record id, -1 for padding) and `mask` [B] float32 (1 for real examples, 0 for padding).

Parallelism: `read_threads` reader threads in this process by default (`workers=0`); with
`workers=N > 0`, grain's own worker processes (`IterDataset.mp_prefetch`) read, preprocess
and batch, each a slice of the stream, their batches interleaved in a fixed order: for
decode-heavy datasets (JPEG ImageNet) on hosts with cores to spare. The batches are as
deterministic and as exactly restorable as with threads, but composed differently (each
comes from one worker's slice), so a run keeps its `data.workers` (workdir check). For the
embedded digits the host stage is a record read and a shape check (the per-pixel work runs
on device, `Task.device_preprocess`): threads are faster there (measured in BENCHMARKS.md).
"""

import dataclasses
import math
from collections.abc import Callable

import grain
import numpy as np
from absl import flags

from cnnjax.data.features import Feature, check_example, pad_example


@dataclasses.dataclass(frozen=True)
class _Prepare:
    """Record (with its id) -> checked example with `index` and `mask`."""

    preprocess: Callable
    spec: dict

    def __call__(self, example: dict, rng: np.random.Generator | None = None) -> dict:
        index = int(example["index"])
        out = self.preprocess(example, rng)
        check_example(self.spec, out, index)
        return {**out, "index": np.int64(index), "mask": np.float32(1.0)}


@dataclasses.dataclass(frozen=True)
class _WithIndex:
    """Adds the record id; later epochs reach the source with indices offset by epoch * n."""

    num_records: int

    def __call__(self, i, example):
        return {**example, "index": i % self.num_records}


def _read_options(read_threads: int, prefetch: int):
    return grain.ReadOptions(
        num_threads=max(1, read_threads), prefetch_buffer_size=max(1, prefetch)
    )


def _in_workers(ds: grain.IterDataset, workers: int, prefetch: int) -> grain.IterDataset:
    """`ds` produced by `workers` grain worker processes (0: as it is, in this process)."""
    if workers <= 0:
        return ds
    if not flags.FLAGS.is_parsed():  # grain reads its absl flags; a notebook never parses any
        flags.FLAGS.mark_as_parsed()
    options = grain.MultiprocessingOptions(
        num_workers=workers, per_worker_buffer_size=max(1, prefetch)
    )
    return ds.mp_prefetch(options)


def train_dataset(
    source,
    preprocess: Callable,
    spec: dict[str, Feature],
    *,
    batch_size: int,
    seed: int,
    read_threads: int = 2,
    prefetch: int = 4,
    workers: int = 0,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.IterDataset:
    """Endless stream of local train batches of `batch_size // process_count` examples;
    reshuffled every epoch, deterministic by seed. `preprocess(record, rng) -> example`;
    `workers` > 0: that many grain worker processes (see the module docstring)."""
    ds = train_examples(source, preprocess, spec, seed=seed, process_index=process_index,
                        process_count=process_count)  # fmt: skip
    ds = ds.to_iter_dataset(_read_options(read_threads, prefetch))
    ds = ds.batch(batch_size // process_count, drop_remainder=True)
    return _in_workers(ds, workers, prefetch)


def train_examples(
    source,
    preprocess: Callable,
    spec: dict[str, Feature],
    *,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.MapDataset:
    """The train stream's examples before batching, as a random-access grain MapDataset
    (`ds[i]` reads and prepares example i in the calling thread: what `train_dataset`'s
    readers run, and what `./launch.sh bench-input --profile` profiles)."""
    ds = grain.MapDataset.source(source).map_with_index(_WithIndex(len(source)))
    ds = ds.seed(seed).shuffle().repeat(None)
    ds = ds[process_index::process_count]
    return ds.random_map(_Prepare(preprocess, spec))


@dataclasses.dataclass(frozen=True)
class _PaddedEval:
    source: object
    num_real: int
    prepare: _Prepare

    def __call__(self, i: int) -> dict:
        if i < self.num_real:
            return self.prepare({**self.source[i], "index": i})
        return pad_example(self.prepare.spec)


def eval_dataset(
    source,
    preprocess: Callable,
    spec: dict[str, Feature],
    *,
    global_batch: int,
    max_examples: int = 0,
    read_threads: int = 2,
    prefetch: int = 4,
    workers: int = 0,
    process_index: int = 0,
    process_count: int = 1,
) -> tuple[grain.IterDataset, int]:
    """Eval batches padded to a whole number of global batches -> (dataset, num_batches).

    `max_examples` > 0 evaluates only the first that many records. Padding examples are the
    spec's pad values with index -1 and mask 0; `preprocess(record, None)` is deterministic.
    """
    n = len(source) if max_examples <= 0 else min(len(source), max_examples)
    num_batches = math.ceil(n / global_batch)
    fn = _PaddedEval(source, n, _Prepare(preprocess, spec))
    ds = grain.MapDataset.range(num_batches * global_batch).map(fn)
    ds = ds[process_index::process_count]
    ds = ds.to_iter_dataset(_read_options(read_threads, prefetch))
    ds = ds.batch(global_batch // process_count)
    return _in_workers(ds, workers, prefetch), num_batches
