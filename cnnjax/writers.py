"""Where metrics go: `metrics.jsonl` (one JSON object per point) and TensorBoard events."""

import json
import math
from pathlib import Path

from tensorboardX import SummaryWriter


class MetricWriter:
    """Writes from process 0 only; other processes get a writer that does nothing."""

    def __init__(self, workdir, enabled: bool = True):
        self.enabled = enabled
        if not enabled:
            return
        workdir = Path(workdir)
        self._jsonl = open(workdir / "metrics.jsonl", "a")  # noqa: SIM115 (closed in close())
        self._tb = SummaryWriter(str(workdir / "tensorboard"))

    def write(self, step: int, split: str, metrics: dict) -> None:
        if not self.enabled:
            return
        clean = {k: float(v) if not isinstance(v, int) else v for k, v in metrics.items()}
        row = {"step": int(step), "split": split, **clean}
        self._jsonl.write(json.dumps(row, allow_nan=True) + "\n")
        self._jsonl.flush()
        for k, v in clean.items():
            if isinstance(v, float) and not math.isnan(v):
                self._tb.add_scalar(f"{split}/{k}", v, int(step))
        self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()


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
