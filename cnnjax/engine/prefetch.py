"""Device prefetch: the next train batches are transferred while the current step runs.

The trainer dispatches a step (asynchronously), then calls `fill()`, which reads the next
`depth` host batches and starts their transfer to the devices with the batch sharding, so
the host-to-device copy (and the host pipeline's read) overlap the step instead of
preceding the next one. Checkpoints must resume after the last batch *trained*, not after
the last one *read*: `get_state()` is the pipeline's state right after the batch most
recently handed out by `__next__`, recorded when that batch was read.
"""

import collections
from collections.abc import Callable, Iterator


class DevicePrefetch:
    """Iterator of (host batch, device batch) over a checkpointable host iterator `source`
    (grain: `get_state` / `set_state`), with up to `depth` batches transferred ahead by
    `put(host batch) -> device batch`. depth 0: each batch is read and put when asked for."""

    def __init__(self, source: Iterator, put: Callable, depth: int = 1):
        if depth < 0:
            raise ValueError(f"data.device_prefetch must be >= 0, got {depth}")
        self._source, self._put, self._depth = source, put, depth
        self._ready = collections.deque()  # (host, device, source state after it)
        self._state = source.get_state()

    def _read_one(self) -> None:
        host = next(self._source)
        self._ready.append((host, self._put(host), self._source.get_state()))

    def fill(self) -> None:
        """Reads and puts batches until `depth` wait (call it right after dispatching)."""
        while len(self._ready) < self._depth:
            self._read_one()

    def __iter__(self):
        return self

    def __next__(self) -> tuple:
        if not self._ready:
            self._read_one()
        host, device, self._state = self._ready.popleft()
        return host, device

    def get_state(self):
        """The source's state after the last batch handed out (what a checkpoint keeps)."""
        return self._state
