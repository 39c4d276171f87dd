"""Gradient norm per convolution, input to output, for each activation (vanishing gradients
layer by layer).

    .venv/bin/python experiments/activations/layer_figure.py [--sweep_dir=runs/sweeps/activations]
        [--step=100] [--out=experiments/activations/grad_norm_by_layer.png]

Reads the 'diagnostics' rows (train.diagnostics_every_steps) of each point, as
cnnjax.tools.report reads a sweep (the last row per step), and plots `grad_norm/<conv>` of
every convolution in network order (the stem `conv1`, then `layer<stage>_<block>/conv<k>`) at
the diagnostics step closest to --step, one line per point (log scale). Prints, per point,
the first and last convolution's gradient norm and their ratio.
"""

import argparse
import re
import sys
from pathlib import Path

from cnnjax.tools import report

CONV = re.compile(r"^grad_norm/(?:conv1|layer(\d+)_(\d+)/conv(\d+))$")


def conv_order(key: str) -> tuple[int, int, int] | None:
    """'grad_norm/conv1' -> (0, 0, 0); 'grad_norm/layer2_3/conv1' -> (2, 3, 1); else None."""
    m = CONV.match(key)
    if not m:
        return None
    return (0, 0, 0) if m.group(1) is None else tuple(int(g) for g in m.groups())


def layer_norms(run: report.PointRun, step: int) -> tuple[int, list[float]] | None:
    """(the diagnostics step used, conv gradient norms in network order) or None."""
    diag = run.rows.get("diagnostics", {})
    if not diag:
        return None
    nearest = min(diag, key=lambda s: (abs(s - step), s))
    row = diag[nearest]
    convs = sorted((conv_order(k), v) for k, v in row.items() if conv_order(k) is not None)
    return nearest, [v for _, v in convs]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sweep_dir", default="runs/sweeps/activations")
    p.add_argument("--step", type=int, default=100)
    p.add_argument("--out", default="experiments/activations/grad_norm_by_layer.png")
    args = p.parse_args(argv)
    runs = report.collect(args.sweep_dir) if Path(args.sweep_dir).is_dir() else []
    found = {}
    for run in runs:
        got = layer_norms(run, args.step)
        if got and got[1]:
            found[run.name] = got
    if not found:
        print(f"no diagnostics rows under {args.sweep_dir}", file=sys.stderr)
        return 2
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    print("| point | step | convs | first conv | last conv | first / last |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, (step, norms) in found.items():
        ax.plot(range(1, len(norms) + 1), norms, marker=".", label=f"{name} (step {step})")
        ratio = norms[0] / norms[-1] if norms[-1] else float("inf")
        print(f"| {name} | {step} | {len(norms)} | {norms[0]:.3g} | {norms[-1]:.3g} | "
              f"{ratio:.3g} |")  # fmt: skip
    ax.set_yscale("log")
    ax.set_xlabel("convolution (1 = first, nearest the input)")
    ax.set_ylabel("gradient norm (L2, kernel)")
    ax.set_title("per-layer gradient norm")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
