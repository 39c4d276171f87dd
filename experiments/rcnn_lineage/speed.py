"""Seconds per image of each detector of the rcnn_lineage sweep: training (the run's wall
time over the images it trained on, start-up and evaluations included) and inference (the
trained run's `predict` on test scenes, after a warm-up call, input pipeline included).

    .venv/bin/python experiments/rcnn_lineage/speed.py [--sweep_dir=runs/sweeps/rcnn_lineage]
        [--images=64] [--readme]

Prints a markdown table (with each run's final test mAP@0.5) and draws
`accuracy_vs_speed.png` (mAP@0.5 against inference seconds per image, log scale) next to this
file; --readme pastes the table between `<!-- speed:start -->` and `<!-- speed:end -->` of
experiments/rcnn_lineage/README.md.
"""

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
START, END = "<!-- speed:start -->", "<!-- speed:end -->"


def _elapsed(workdir: Path) -> float | None:
    status = workdir / "sweep_status.json"
    if not status.exists():
        return None
    value = json.loads(status.read_text()).get("elapsed_s")
    return float(value) if value is not None else None


def measure(workdir: Path, images: np.ndarray) -> dict:
    import cnnjax

    run = cnnjax.load(workdir)
    c = run.config
    run.predict(images[:8])  # compiles
    start = time.perf_counter()
    run.predict(images)
    infer = (time.perf_counter() - start) / len(images)
    elapsed = _elapsed(workdir)
    trained = c.train.num_steps * c.data.batch_size
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in rows if r.get("split") == "eval"][-1]
    return {
        "run": workdir.name,
        "task": run.task.name,
        "map50": final["map50"],
        "train_s_per_image": elapsed / trained if elapsed else float("nan"),
        "infer_s_per_image": infer,
    }


def figure(rows: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    fig = Figure(figsize=(5.5, 3.6), layout="constrained")
    ax = fig.subplots()
    for r in rows:
        ax.scatter(r["infer_s_per_image"] * 1e3, r["map50"], s=30)
        ax.annotate(r["run"], (r["infer_s_per_image"] * 1e3, r["map50"]), fontsize=7,
                    xytext=(4, 2), textcoords="offset points")  # fmt: skip
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())  # decades only: minor labels overlap
    ax.set(xlabel="inference ms / image (log)", ylabel="test mAP@0.5", ylim=(0, 1.05))
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=110)


def table(rows: list[dict]) -> str:
    lines = [
        "| run | task | test mAP@0.5 | train s / image | inference s / image |",
        "|---|---|---:|---:|---:|",
    ]
    lines += [
        f"| {r['run']} | {r['task']} | {r['map50']:.4f} | {r['train_s_per_image']:.4f} | "
        f"{r['infer_s_per_image']:.4f} |"
        for r in rows
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sweep_dir", default=str(ROOT / "runs/sweeps/rcnn_lineage"))
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--readme", action="store_true")
    args = p.parse_args(argv)
    sys.path.insert(0, str(HERE))
    from sweep import get_sweep

    from cnnjax.data.digits import load_digits
    from cnnjax.data.scenes import generate_split

    digits, labels = load_digits()
    scenes = itertools.islice(generate_split("test", digits, labels), args.images)
    images = np.stack([s["image"] for _, s in scenes])
    rows = []
    for point in get_sweep():
        wd = Path(args.sweep_dir) / point.name
        if (wd / "checkpoints").is_dir():
            rows.append(measure(wd, images))
            print(json.dumps(rows[-1]), file=sys.stderr)
    text = table(rows)
    print(text, end="")
    if rows:
        figure(rows, HERE / "accuracy_vs_speed.png")
    if args.readme:
        readme = HERE / "README.md"
        head, rest = readme.read_text().split(START, 1)
        _, tail = rest.split(END, 1)
        readme.write_text(f"{head}{START}\n{text}{END}{tail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
