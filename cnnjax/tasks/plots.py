"""Figures that tasks draw (matplotlib, no display needed): image grids with titles."""

import numpy as np


def figure(rows: int, cols: int, cell: float = 1.6):
    """A matplotlib Figure with a rows x cols grid of axes without ticks -> (fig, axes
    [rows, cols])."""
    # A bare Figure needs no backend (savefig picks Agg for PNG), and choosing one here would
    # switch a notebook's pyplot away from its inline backend.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(cols * cell, rows * cell + 0.3), layout="constrained")
    axes = np.asarray(fig.subplots(rows, cols, squeeze=False))
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig, axes


def show_image(ax, image: np.ndarray, title: str = "", color: str = "black") -> None:
    """Draws float [H, W, C] in [0, 1] (C = 1 as grey) on `ax`."""
    image = np.clip(np.asarray(image, np.float32), 0.0, 1.0)
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0.0, vmax=1.0)
    else:
        ax.imshow(image)
    if title:
        ax.set_title(title, fontsize=8, color=color)


def denormalize(images: np.ndarray, mean, std) -> np.ndarray:
    """Normalised [N, H, W, C] -> [0, 1] images (inverse of `(x - mean) / std`)."""
    return np.asarray(images, np.float32) * np.asarray(std, np.float32) + np.asarray(
        mean, np.float32
    )


def png_bytes(fig) -> bytes:
    """The figure as PNG bytes."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def palette(num_classes: int) -> np.ndarray:
    """[K, 3] float colours in [0, 1]: class 0 (background) black, the rest from tab10 /
    tab20."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if num_classes <= 11 else "tab20"]
    colours = [(0.0, 0.0, 0.0)] + [cmap(i % cmap.N)[:3] for i in range(num_classes - 1)]
    return np.asarray(colours, np.float32)


def class_overlay(image: np.ndarray, classes: np.ndarray, num_classes: int, ignore: int = 255):
    """A [0, 1] image [H, W, 3] with each pixel's class colour blended over it (background
    shows the image), ignored pixels white."""
    grey = np.repeat(np.clip(image, 0, 1), 3, -1) if image.shape[-1] == 1 else np.clip(image, 0, 1)
    colours = palette(num_classes)[np.clip(classes, 0, num_classes - 1)]
    fg = (classes > 0) & (classes != ignore)
    out = np.where(fg[..., None], 0.35 * grey + 0.65 * colours, grey)
    return np.where((classes == ignore)[..., None], 1.0, out)


def class_legend(fig, names, num_classes: int) -> None:
    """A row of coloured patches naming the classes, under the figure."""
    from matplotlib.patches import Patch

    colours = palette(num_classes)
    handles = [Patch(color=colours[i], label=str(names[i])) for i in range(num_classes)]
    handles.append(Patch(facecolor="white", edgecolor="grey", label="ignore"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(6, len(handles)), fontsize=7)
