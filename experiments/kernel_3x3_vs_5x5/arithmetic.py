"""Parameters, MACs and receptive field of every variant of a CIFAR-ResNet sweep, computed by
cnnjax.analysis.arithmetic from the sweep's own points (not typed in).

    .venv/bin/python experiments/kernel_3x3_vs_5x5/arithmetic.py [SWEEP_PY]

SWEEP_PY defaults to this folder's sweep.py; any sweep of CIFAR ResNet variants works.
Prints a markdown table, one row per variant (seed 0), at the sweep's image size.
"""

import sys
from pathlib import Path

from cnnjax import models
from cnnjax.analysis import arithmetic
from cnnjax.tools import sweep as sweeplib


def variant(point) -> tuple[str, dict, int, int]:
    """A point -> (model name, its model.kwargs overrides, image size, input channels: 1 for
    the embedded grayscale digits (`:digits`), 3 for CIFAR)."""
    name, kwargs, size = "resnet20_cifar", {}, 32
    channels = 1 if "digits" in point.config.partition(":")[2].split(",") else 3
    if ",plain" in point.config or point.config.endswith(":plain"):
        name = "plain20_cifar"
    for item in point.overrides:
        key, value = item.split("=", 1)
        if key == "model.name":
            name = value
        elif key.startswith("model.kwargs."):
            kwargs[key.removeprefix("model.kwargs.")] = eval(value, {})  # a repr() of a literal
        elif key == "data.image_size":
            size = int(value)
    return name, kwargs, size, channels


def rows(sweep_py: Path) -> list[dict]:
    out, seen = [], set()
    for point in sweeplib.load_sweep(sweep_py):
        if point.group in seen:
            continue
        seen.add(point.group)
        name, kwargs, size, channels = variant(point)
        model = models.create(name, num_classes=10, **kwargs)
        s = arithmetic.analyze(model, (size, size, channels))
        convs = [la for la in s.layers if la.kind == "Conv"]
        out.append({"variant": point.group, "model": name, "kwargs": kwargs, "size": size,
                    "channels": channels,
                    "convs": len(convs), "params": s.params, "macs": s.macs,
                    "receptive_field": s.receptive_field})  # fmt: skip
    return out


def markdown(table: list[dict]) -> str:
    base = table[0]
    lines = [
        "| variant | model.kwargs | conv layers | params | MACs / image | RF (px) | vs first |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in table:
        kw = ", ".join(f"{k}={v!r}" for k, v in r["kwargs"].items()) or "-"
        lines.append(
            f"| {r['variant']} | `{kw}` | {r['convs']} | {r['params']:,} | {r['macs']:,} "
            f"| {r['receptive_field']:g} | {r['params'] / base['params']:.2f}x params, "
            f"{r['macs'] / base['macs']:.2f}x MACs |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else here / "sweep.py"
    first = rows(target)[0]
    print(f"At {first['size']} px, one image of {first['channels']} channel(s):\n")
    print(markdown(rows(target)))
