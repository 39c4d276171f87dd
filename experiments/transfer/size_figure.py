"""Test accuracy against the number of target training images, one line per start
(scratch, fine-tune, linear probe): transfer learning at a glance.

    .venv/bin/python experiments/transfer/size_figure.py \
        [--sweep_dir=runs/sweeps/transfer] [--out=PNG]

(default --out: experiments/transfer/accuracy_vs_size.png)

Reads each finished point of experiments/transfer/sweep.py (cnnjax.tools.report's reading
of its workdir: the sweep's own 'done', the last row per step): its final test accuracy,
and the number of training images it saw from its dataset_info.json. Means over seeds, each
seed a dot. Prints the numbers it plots.
"""

import argparse
import collections
import json
import re
import sys
from pathlib import Path

from cnnjax.tools import report

NAME = re.compile(r"^(scratch|finetune_lr0\.1|finetune|probe)_(\w+?)_s(\d+)$")
MODES = (("scratch", "tab:gray"), ("finetune", "tab:red"), ("finetune_lr0.1", "tab:orange"),
         ("probe", "tab:blue"))  # fmt: skip


def point(run: report.PointRun) -> tuple[int, float] | None:
    """(training images, final test accuracy) of a finished point, else None."""
    evals = [r for r in run.rows.get("eval", {}).values() if "accuracy" in r]
    info = run.workdir / "dataset_info.json"
    if run.state != "done" or not evals or not info.exists():
        return None
    return json.loads(info.read_text())["num_train"], evals[-1]["accuracy"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sweep_dir", default="runs/sweeps/transfer")
    p.add_argument("--out", default="experiments/transfer/accuracy_vs_size.png")
    args = p.parse_args(argv)
    found = collections.defaultdict(list)  # (mode, images) -> [accuracy]
    runs = report.collect(args.sweep_dir) if Path(args.sweep_dir).is_dir() else []
    for run in runs:
        m = NAME.match(run.name)
        got = point(run) if m else None
        if got:
            found[(m.group(1), got[0])].append(got[1])
    if not found:
        print(f"no finished points under {args.sweep_dir}", file=sys.stderr)
        return 2
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    print("| start | training images | seeds | test accuracy (mean) | per seed |")
    print("|---|---:|---:|---:|---|")
    for mode, color in MODES:
        sizes = sorted(n for k, n in found if k == mode)
        if not sizes:
            continue
        means = [sum(found[mode, n]) / len(found[mode, n]) for n in sizes]
        ax.plot(sizes, [100 * m for m in means], color=color, marker="o", label=mode)
        for n, mean in zip(sizes, means, strict=True):
            accs = found[mode, n]
            ax.scatter([n] * len(accs), [100 * a for a in accs], color=color, s=10, alpha=0.5)
            seeds = ", ".join(f"{100 * a:.1f}%" for a in accs)
            print(f"| {mode} | {n} | {len(accs)} | {100 * mean:.2f}% | {seeds} |")
    ax.set_xscale("log")
    sizes = sorted({n for _, n in found})
    ax.set_xticks(sizes, [str(n) for n in sizes])
    ax.minorticks_off()
    ax.set_xlabel("target training images (digits 5-9)")
    ax.set_ylabel("test accuracy on 5-9 (%)")
    ax.set_title("from digits 0-4 to 5-9: start vs training-set size")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
