"""Draws eight digits_scenes test scenes (boxes + classes, next to the segmentation map).

    .venv/bin/python experiments/scenes_figure.py   # -> experiments/figures/digits_scenes.png

The scenes come from `cnnjax.data.scenes.generate_split`, the generator the tfds builder
writes, so the picture shows test records (the first empty scene and the first seven others,
titled by record index) without preparing the dataset.
"""

import itertools
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from cnnjax.data import scenes  # noqa: E402

OUT = Path(__file__).parent / "figures" / "digits_scenes.png"
# Index 0 background (black), 1-10 the digit classes, 11 the ignore border (white).
COLOURS = ListedColormap(["black", *plt.get_cmap("tab10").colors, "white"])


def draw(ax_image, ax_seg, index, scene):
    ax_image.set_title(f"test #{index}", fontsize=8, loc="left")
    ax_image.imshow(scene["image"][..., 0], cmap="gray", vmin=0, vmax=255)
    for (y1, x1, y2, x2), cls in zip(scene["boxes"] * 64, scene["box_classes"], strict=True):
        colour = COLOURS(int(cls) + 1)
        # Pixel-edge boxes: pixel r spans [r - 0.5, r + 0.5] in imshow's coordinates.
        ax_image.add_patch(
            plt.Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, ec=colour, lw=1.2)
        )
        ax_image.text(x1 - 0.5, y1 - 1.5, str(cls), color=colour, fontsize=8, weight="bold")
    seg = scene["segmentation"].astype(int)
    seg[seg == scenes.IGNORE_INDEX] = 11
    ax_seg.imshow(seg, cmap=COLOURS, vmin=0, vmax=11, interpolation="nearest")


def main():
    images, labels = scenes.load_digits()
    test = list(itertools.islice(scenes.generate_split("test", images, labels), 100))
    empty = [(i, s) for i, s in test if len(s["boxes"]) == 0][:1]
    picked = sorted(empty + [(i, s) for i, s in test if len(s["boxes"])][:7], key=lambda t: t[0])
    fig, axes = plt.subplots(4, 4, figsize=(8, 8.4))
    for k, (index, scene) in enumerate(picked):
        draw(axes[k // 2, 2 * (k % 2)], axes[k // 2, 2 * (k % 2) + 1], index, scene)
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle("digits_scenes (test split): boxes + classes | segmentation (white = ignore)")
    fig.tight_layout()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT, dpi=110, facecolor="white")
    print(f"wrote {OUT} ({np.sum([len(s['boxes']) for _, s in picked])} digits in 8 scenes)")


if __name__ == "__main__":
    main()
