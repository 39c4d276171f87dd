"""Where metrics go: `metrics.jsonl` (one JSON object per point) and TensorBoard events."""

import json
import math
import time
from pathlib import Path

# TensorBoard's own event writer: pure Python, no TensorFlow (tensorboardX would import torch
# whenever it is installed, 2-3 s of every start).
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter


class MetricWriter:
    """Writes from process 0 only; other processes get a writer that does nothing."""

    def __init__(self, workdir, enabled: bool = True):
        self.enabled = enabled
        if not enabled:
            return
        workdir = Path(workdir)
        self._jsonl = open(workdir / "metrics.jsonl", "a")  # noqa: SIM115 (closed in close())
        self._tb = EventFileWriter(str(workdir / "tensorboard"))

    def write(self, step: int, split: str, metrics: dict) -> None:
        if not self.enabled:
            return
        clean = {k: _plain(v) for k, v in metrics.items()}
        row = {"step": int(step), "split": split, **clean}
        self._jsonl.write(json.dumps(row, allow_nan=True) + "\n")
        self._jsonl.flush()
        values = [  # a list (per-class IoU, per-time-step gradients) is one tag per entry
            summary_pb2.Summary.Value(tag=tag, simple_value=v)
            for tag, v in _scalars(split, clean)
            if isinstance(v, int | float) and not isinstance(v, bool) and not math.isnan(v)
        ]
        event = event_pb2.Event(
            wall_time=time.time(), step=int(step), summary=summary_pb2.Summary(value=values)
        )
        self._tb.add_event(event)
        self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()


def _scalars(split: str, metrics: dict):
    """(tag, value) pairs: `split/key`, and `split/key/{i}` for entry i of a flat list."""
    for k, v in metrics.items():
        if isinstance(v, list):
            width = len(str(max(len(v) - 1, 0)))
            for i, x in enumerate(v):
                yield f"{split}/{k}/{i:0{width}d}", x
        else:
            yield f"{split}/{k}", v


def _plain(v):
    """A metric value as JSON: ints stay ints, arrays and sequences become lists of floats."""
    if isinstance(v, bool | int | str):
        return v
    if isinstance(v, list | tuple) or getattr(v, "ndim", 0) > 0:
        return [_plain(x) for x in list(v)]
    return float(v)


def read_metrics(workdir) -> list[dict]:
    """All rows of `workdir/metrics.jsonl` (a partial last line from a kill is skipped)."""
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows
