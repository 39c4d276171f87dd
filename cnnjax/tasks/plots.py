"""Figures that tasks draw (matplotlib, no display needed): image grids with titles."""

import numpy as np


def figure(rows: int, cols: int, cell: float = 1.6):
    """A matplotlib Figure with a rows x cols grid of axes without ticks -> (fig, axes
    [rows, cols])."""
    import matplotlib

    matplotlib.use("Agg", force=False)
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
