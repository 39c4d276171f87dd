"""Exact host-side accumulators of a task's per-example eval outputs.

An accumulator receives, batch by batch, the rows of the eval outputs that this process
read (numpy arrays with a leading batch axis, padding rows flagged by `mask` 0), can be
merged with another process's (`merge`), and turns what it saw into metrics (`result`).
Its `state()` is a dict of numpy arrays, so the engine can gather it across processes.
"""

import abc

import numpy as np


class Accumulator(abc.ABC):
    @abc.abstractmethod
    def add(self, outputs: dict[str, np.ndarray]) -> None:
        """Adds one batch of per-example outputs (every array [B, ...], `mask` [B])."""

    @abc.abstractmethod
    def state(self) -> dict[str, np.ndarray]:
        """Everything seen so far, as numpy arrays (the same keys for every process)."""

    @abc.abstractmethod
    def merge_state(self, state: dict[str, np.ndarray]) -> None:
        """Adds another accumulator's `state()` (another process's share of the split)."""

    @abc.abstractmethod
    def result(self) -> dict:
        """The metrics of everything added and merged (floats, ints or lists)."""

    def merge(self, other: "Accumulator") -> None:
        self.merge_state(other.state())

    def write_files(self, directory, stem: str) -> list:
        """Writes what the metrics look like beyond numbers (tables, curves) into
        `directory` as `<stem>_*` files -> their paths. Nothing by default."""
        del directory, stem
        return []


class MaskedSums(Accumulator):
    """Sums every output over real examples in float64: an output [B, ...] adds
    `sum_b mask[b] * x[b]` (any trailing shape, e.g. a [K, K] confusion matrix), and
    `count` is the number of real examples. Exact for integer counts below 2**53."""

    def __init__(self):
        self.totals: dict[str, np.ndarray] = {}

    def add(self, outputs: dict[str, np.ndarray]) -> None:
        mask = np.asarray(outputs["mask"], np.float64)
        self._add("count", mask.sum())
        for key, x in outputs.items():
            if key != "mask":
                self._add(key, np.tensordot(mask, np.asarray(x, np.float64), axes=(0, 0)))

    def _add(self, key: str, value) -> None:
        value = np.asarray(value, np.float64)
        self.totals[key] = self.totals[key] + value if key in self.totals else value

    def state(self) -> dict[str, np.ndarray]:
        return dict(self.totals)

    def merge_state(self, state: dict[str, np.ndarray]) -> None:
        for key, value in state.items():
            self._add(key, value)

    @property
    def count(self) -> int:
        n = int(self.totals.get("count", 0))
        if n == 0:
            raise ValueError("no examples were evaluated (the eval split is empty after masking)")
        return n

    def mean(self, key: str) -> float:
        """The average of output `key` over real examples."""
        n = self.count  # raises first when nothing was evaluated
        return float(self.totals[key] / n)

    def result(self) -> dict:
        return {
            **{k: self.mean(k) for k in self.totals if k != "count"},
            "num_examples": self.count,
        }
