"""Error against depth for plain and residual nets (the degradation problem at a glance).

    .venv/bin/python experiments/plain_vs_residual/depth_figure.py \
        [--sweep_dir=runs/sweeps/plain_vs_residual] [--out=PNG] [--last=8]

(default --out: experiments/plain_vs_residual/error_vs_depth.png)

Reads each finished point's metrics.jsonl: the training error is 1 - the mean train accuracy
of the last `--last` logged training rows (each row averages the steps since the previous
one; the last rows are at the final, smallest learning rate), the test error 1 - the final
eval accuracy. One line per kind (plain, resnet): solid train, dashed test; the mean over
seeds, with each seed as a dot. Prints the numbers it plots.
"""

import argparse
import collections
import re
import sys
from pathlib import Path

from cnnjax.tools import report

NAME = re.compile(r"^(plain|resnet)(\d+)_s(\d+)$")


def errors(run: report.PointRun, last: int) -> tuple[float, float] | None:
    """(train error, test error) of a finished point (cnnjax.tools.report's reading of its
    workdir: the sweep's own 'done', the last row per step), else None."""
    train = [r["accuracy"] for r in run.rows.get("train", {}).values() if "accuracy" in r]
    evals = [r for r in run.rows.get("eval", {}).values() if "accuracy" in r]
    if run.state != "done" or not train or not evals:
        return None
    tail = train[-last:]
    return 1 - sum(tail) / len(tail), 1 - evals[-1]["accuracy"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sweep_dir", default="runs/sweeps/plain_vs_residual")
    p.add_argument("--out", default="experiments/plain_vs_residual/error_vs_depth.png")
    p.add_argument("--last", type=int, default=8, help="training rows averaged (default 8)")
    args = p.parse_args(argv)
    found = collections.defaultdict(list)  # (kind, depth) -> [(train_err, test_err)]
    runs = report.collect(args.sweep_dir) if Path(args.sweep_dir).is_dir() else []
    for run in runs:
        m = NAME.match(run.name)
        e = errors(run, args.last) if m else None
        if e:
            found[(m.group(1), int(m.group(2)))].append(e)
    if not found:
        print(f"no finished plain*/resnet* points under {args.sweep_dir}", file=sys.stderr)
        return 2
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    print("| net | depth | seeds | train error | test error |\n|---|---:|---:|---:|---:|")
    for kind, color in (("plain", "tab:blue"), ("resnet", "tab:red")):
        depths = sorted(d for k, d in found if k == kind)
        for i, split in enumerate(("train", "test")):
            means = [sum(e[i] for e in found[kind, d]) / len(found[kind, d]) for d in depths]
            style = "-" if split == "train" else "--"
            ax.plot(depths, [100 * m for m in means], color=color, marker="o", linestyle=style,
                    label=f"{kind} {split}")  # fmt: skip
            for d in depths:
                ax.scatter([d] * len(found[kind, d]), [100 * e[i] for e in found[kind, d]],
                           color=color, s=10, alpha=0.5)  # fmt: skip
        for d in depths:
            es = found[kind, d]
            tr, te = (sum(e[i] for e in es) / len(es) for i in (0, 1))
            print(f"| {kind} | {d} | {len(es)} | {100 * tr:.2f}% | {100 * te:.2f}% |")
    ax.set_xlabel("depth (layers)")
    ax.set_ylabel("error (%)")
    ax.set_title("plain vs residual: error at the end of training")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
