"""Per-example geometric transforms (numpy, host side) that move boxes and masks with the image.

An example is a dict that may hold `image` [H, W, C] uint8 or float32, `boxes` [N, 4] float32
normalised (y1, x1, y2, x2) with pixel-edge semantics (pixel row r spans [r/H, (r+1)/H], so a
box around rows r0..r1 has y1 = r0/H, y2 = (r1+1)/H), `box_classes` [N] int, and
`segmentation` [H, W] integer class map. Every function returns a new dict with the same keys;
boxes and their classes are filtered together; any other key passes through unchanged.
"""

import numpy as np
from PIL import Image

BOX_KEYS = ("boxes", "box_classes")  # per-box arrays, filtered together


def image_size(example: dict) -> tuple[int, int]:
    """(H, W) of the example's `image` or, failing that, its `segmentation`."""
    for key in ("image", "segmentation"):
        if key in example:
            return tuple(example[key].shape[:2])
    raise ValueError("example has neither 'image' nor 'segmentation': its size is unknown")


def keep_boxes(example: dict, keep: np.ndarray) -> dict:
    """Keeps the boxes where `keep` [N] bool is True, in every per-box key (BOX_KEYS)."""
    return {k: (v[keep] if k in BOX_KEYS else v) for k, v in example.items()}


def clip_boxes(boxes: np.ndarray) -> np.ndarray:
    """Clips normalised boxes [N, 4] float32 to the image, [0, 1]; shape and dtype preserved."""
    return np.clip(boxes, 0.0, 1.0).astype(np.float32)


def box_areas(boxes: np.ndarray) -> np.ndarray:
    """[N, 4] (y1, x1, y2, x2) -> [N] areas (0 where y2 <= y1 or x2 <= x1), in the boxes' units."""
    return np.maximum(boxes[:, 2] - boxes[:, 0], 0) * np.maximum(boxes[:, 3] - boxes[:, 1], 0)


def drop_degenerate(example: dict, min_size: float = 0.0) -> dict:
    """Drops boxes whose normalised height or width is <= `min_size` (with their classes)."""
    if "boxes" not in example:
        return dict(example)
    b = example["boxes"]
    keep = (b[:, 2] - b[:, 0] > min_size) & (b[:, 3] - b[:, 1] > min_size)
    return keep_boxes(example, keep)


def hflip(example: dict) -> dict:
    """Mirrors left-right: column c -> W-1-c, box (y1, x1, y2, x2) -> (y1, 1-x2, y2, 1-x1)."""
    out = dict(example)
    for key in ("image", "segmentation"):
        if key in out:
            out[key] = np.ascontiguousarray(out[key][:, ::-1])
    if "boxes" in out:
        b = out["boxes"]
        out["boxes"] = np.stack([b[:, 0], 1 - b[:, 3], b[:, 2], 1 - b[:, 1]], -1).astype(np.float32)
    return out


def vflip(example: dict) -> dict:
    """Mirrors top-bottom: row r -> H-1-r, box (y1, x1, y2, x2) -> (1-y2, x1, 1-y1, x2)."""
    out = dict(example)
    for key in ("image", "segmentation"):
        if key in out:
            out[key] = np.ascontiguousarray(out[key][::-1])
    if "boxes" in out:
        b = out["boxes"]
        out["boxes"] = np.stack([1 - b[:, 2], b[:, 1], 1 - b[:, 0], b[:, 3]], -1).astype(np.float32)
    return out


def _resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear PIL resize of uint8 or float32 [H, W, C] to [height, width, C], per channel."""
    if image.dtype not in (np.uint8, np.float32):
        raise ValueError(f"resize takes a uint8 or float32 image, got {image.dtype}")
    planes = [
        np.asarray(Image.fromarray(image[..., k]).resize((width, height), Image.BILINEAR))
        for k in range(image.shape[-1])
    ]
    return np.stack(planes, axis=-1).astype(image.dtype)


def _resize_nearest(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest resize of [H, W] (pixel centres: out i <- in floor((i + 0.5) H / height))."""
    h, w = mask.shape[:2]
    rows = (2 * np.arange(height) + 1) * h // (2 * height)  # exact integer arithmetic
    cols = (2 * np.arange(width) + 1) * w // (2 * width)
    return mask[rows[:, None], cols[None, :]]


def resize(example: dict, height: int, width: int) -> dict:
    """Resizes to [height, width]: image bilinear, segmentation nearest, boxes unchanged.

    Normalised pixel-edge boxes need no change: the box edge y1 * height is exactly where row
    y1 * H's upper edge lands, and the nearest-resized mask's edge is within half a pixel of it.
    """
    out = dict(example)
    if "image" in out and out["image"].shape[:2] != (height, width):
        out["image"] = _resize_image(out["image"], height, width)
    if "segmentation" in out:
        out["segmentation"] = _resize_nearest(out["segmentation"], height, width)
    return out


def _window(array: np.ndarray, top: int, left: int, height: int, width: int, fill) -> np.ndarray:
    """Rows top..top+height-1, cols left..left+width-1 of [H, W, ...]; outside = `fill`."""
    out = np.full((height, width, *array.shape[2:]), fill, array.dtype)
    h, w = array.shape[:2]
    y0, y1 = max(top, 0), min(top + height, h)
    x0, x1 = max(left, 0), min(left + width, w)
    if y1 > y0 and x1 > x0:
        out[y0 - top : y1 - top, x0 - left : x1 - left] = array[y0:y1, x0:x1]
    return out


def crop(
    example: dict,
    top: int,
    left: int,
    height: int,
    width: int,
    *,
    image_fill=0,
    mask_fill: int = 255,
    min_visible: float = 0.0,
) -> dict:
    """Cuts the [height, width] window whose top-left pixel is (top, left) of the H x W example.

    The window may extend past the image (negative or large offsets): the outside is padding,
    `image_fill` in the image and `mask_fill` (default 255, ignore) in the segmentation. Boxes
    are re-expressed in the window's normalised coordinates and clipped to it; a box is dropped
    (with its class) when its clipped area is zero or below `min_visible` (a fraction in [0, 1])
    of its area before clipping. Returns arrays of the window's size.
    """
    h, w = image_size(example)
    out = dict(example)
    if "image" in out:
        out["image"] = _window(out["image"], top, left, height, width, image_fill)
    if "segmentation" in out:
        out["segmentation"] = _window(out["segmentation"], top, left, height, width, mask_fill)
    if "boxes" not in out:
        return out
    scale = np.array([h, w, h, w], np.float64)
    shifted = out["boxes"] * scale - np.array([top, left, top, left], np.float64)
    clipped = np.clip(shifted, 0.0, np.array([height, width, height, width], np.float64))
    area = box_areas(clipped)
    keep = (area > 0) & (area >= min_visible * box_areas(shifted))
    out["boxes"] = (clipped / np.array([height, width, height, width])).astype(np.float32)
    return keep_boxes(out, keep)


def random_crop_with_padding(
    example: dict, padding: int, rng: np.random.Generator, *, mask_fill: int = 255
) -> dict:
    """Zero-pads H x W by `padding` on each side and cuts a random H x W window.

    The box-aware twin of `transforms.random_crop`: the same draw from `rng` gives the same
    window. Padding reads 0 in the image and `mask_fill` in the segmentation.
    """
    if padding <= 0:
        return dict(example)
    h, w = image_size(example)
    top, left = rng.integers(0, 2 * padding + 1, size=2)
    return crop(example, int(top) - padding, int(left) - padding, h, w, mask_fill=mask_fill)


def random_flip(
    example: dict, rng: np.random.Generator, horizontal: bool = True, vertical: bool = False
) -> dict:
    """Flips left-right and/or top-bottom, each enabled one with probability 1/2."""
    out = dict(example)
    if horizontal and rng.random() < 0.5:
        out = hflip(out)
    if vertical and rng.random() < 0.5:
        out = vflip(out)
    return out


def random_scale(
    example: dict, low: float, high: float, rng: np.random.Generator, *, mask_fill: int = 255
) -> dict:
    """Scale jitter: resizes H x W by a factor drawn from U[low, high], then returns to H x W.

    A larger scaled image is cropped at a random window; a smaller one is placed at a random
    position on a zero (image) / `mask_fill` (segmentation) canvas. Boxes follow (`crop`).
    """
    h, w = image_size(example)
    factor = rng.uniform(low, high)
    sh, sw = max(1, round(h * factor)), max(1, round(w * factor))
    scaled = resize(example, sh, sw)
    top = int(rng.integers(min(0, sh - h), max(0, sh - h) + 1))
    left = int(rng.integers(min(0, sw - w), max(0, sw - w) + 1))
    return crop(scaled, top, left, h, w, mask_fill=mask_fill)


def pad_boxes(
    boxes: np.ndarray, classes: np.ndarray, max_boxes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pads N boxes to a static `max_boxes` for batching.

    Args:
      boxes: [N, 4] float32 (y1, x1, y2, x2).
      classes: [N] int.
      max_boxes: the static length; N > max_boxes raises ValueError (the caller decides
        whether to raise the limit or drop boxes first).

    Returns:
      (boxes [max_boxes, 4] float32, zeros past N; classes [max_boxes] int32, zeros past N;
      valid [max_boxes] float32, 1 for the N real boxes, 0 for padding).
    """
    n = len(boxes)
    if n > max_boxes:
        raise ValueError(f"{n} boxes do not fit max_boxes={max_boxes}")
    out_boxes = np.zeros((max_boxes, 4), np.float32)
    out_classes = np.zeros((max_boxes,), np.int32)
    out_boxes[:n], out_classes[:n] = boxes, classes
    valid = (np.arange(max_boxes) < n).astype(np.float32)
    return out_boxes, out_classes, valid
