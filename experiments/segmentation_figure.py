"""Side by side: test scenes, their ground truth and the predictions of trained segmentation
runs (boundary quality at a glance), each run loaded with `cnnjax.load`.

    .venv/bin/python experiments/segmentation_figure.py RUN [RUN ...] --out=FILE.png
        [--names=a,b] [--scenes=6]

e.g. `runs/sweeps/fcn_skips/fcn32s runs/sweeps/fcn_skips/fcn8s` (experiments/fcn_skips).
The scenes are digits_scenes test records from `cnnjax.data.scenes.generate_split` (the
generator the tfds builder writes), the first that hold three or more digits, so no dataset
needs to be prepared. Each panel is titled with that scene's mIoU (over the classes present
in its labels or predictions; the one-pixel ignore border around each digit counts nowhere).
"""

import argparse
import itertools
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import cnnjax  # noqa: E402
from cnnjax.data import scenes  # noqa: E402
from cnnjax.metrics import segmentation as seg_metrics  # noqa: E402
from cnnjax.tasks import plots  # noqa: E402


def pick_scenes(n: int, min_digits: int = 3) -> list[dict]:
    images, labels = scenes.load_digits()
    test = (s for _, s in scenes.generate_split("test", images, labels))
    return list(itertools.islice((s for s in test if len(s["boxes"]) >= min_digits), n))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="workdirs of segmentation runs on digits_scenes")
    p.add_argument("--out", required=True, help="the PNG to write")
    p.add_argument(
        "--names", default="", help="column titles, comma-separated (default: folder names)"
    )
    p.add_argument("--scenes", type=int, default=6)
    args = p.parse_args(argv)
    names = args.names.split(",") if args.names else [Path(r).name for r in args.runs]
    if len(names) != len(args.runs):
        p.error(f"--names gives {len(names)} names for {len(args.runs)} runs")
    picked = pick_scenes(args.scenes)
    images = np.stack([s["image"] for s in picked])
    truth = np.stack([s["segmentation"] for s in picked]).astype(np.int64)
    loaded = [cnnjax.load(r) for r in args.runs]
    k = loaded[0].task.classes
    preds = [np.asarray(run.predict(images).classes) for run in loaded]
    cols = 2 + len(loaded)
    fig, axes = plt.subplots(len(picked), cols, figsize=(1.9 * cols, 1.9 * len(picked) + 0.6),
                             layout="constrained")  # fmt: skip
    axes = np.atleast_2d(axes)
    grey = images.astype(np.float32) / 255.0
    for i in range(len(picked)):
        panels = [
            ("image", grey[i], None),
            ("ground truth", plots.class_overlay(grey[i], truth[i], k), None),
        ]
        for name, pred in zip(names, preds, strict=True):
            m = seg_metrics.evaluate(truth[i], pred[i], num_classes=k)["miou"]
            panels.append((f"{name} ({m:.3f})", plots.class_overlay(grey[i], pred[i], k), m))
        for ax, (title, picture, _) in zip(axes[i], panels, strict=True):
            rgb = picture.shape[-1] == 3
            ax.imshow(picture if rgb else picture[..., 0], cmap=None if rgb else "gray",
                      interpolation="nearest")  # fmt: skip
            ax.set_title(title, fontsize=7)
            ax.set_xticks([]), ax.set_yticks([])
    label_names = loaded[0].info.metadata.get("segmentation_class_names") or [
        str(c) for c in range(k)
    ]
    plots.class_legend(fig, label_names, k)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, facecolor="white")
    print(f"wrote {out}: {len(picked)} scenes x {len(loaded)} runs")


if __name__ == "__main__":
    main()
