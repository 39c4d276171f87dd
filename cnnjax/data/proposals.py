"""Selective search region proposals (Uijlings et al. 2013), R-CNN's and Fast R-CNN's input,
with OpenCV's implementation, for one image in the input pipeline; padded to a fixed count.

OpenCV ranks its regions by hierarchy level times a number from the C library's unseeded
`rand()`, so its order (and any top-P cut of it) changes from call to call. Here the unique
boxes are kept instead and, when there are more than `max_proposals`, a deterministic spread
over their areas is taken: the same image always gives the same proposals.
"""

import cv2
import numpy as np

MODES = ("fast", "quality", "single")


def _to_uint8_rgb(image: np.ndarray) -> np.ndarray:
    """[H, W, C] uint8 or float in [0, 1] -> [H, W, 3] uint8 (gray repeated to 3 channels)."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(f"selective_search needs an [H, W, 1 or 3] image, got {image.shape}")
    if image.dtype != np.uint8:
        image = np.clip(np.rint(np.asarray(image, np.float64) * 255.0), 0, 255).astype(np.uint8)
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return np.ascontiguousarray(image)


def _spread(boxes: np.ndarray, count: int) -> np.ndarray:
    """Boxes [N, 4] sorted by area (then coordinates) -> `count` of them evenly spaced."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    order = np.lexsort((boxes[:, 3], boxes[:, 2], boxes[:, 1], boxes[:, 0], area))
    boxes = boxes[order]
    if len(boxes) <= count:
        return boxes
    return boxes[np.round(np.linspace(0, len(boxes) - 1, count)).astype(np.int64)]


def selective_search(
    image: np.ndarray, max_proposals: int, *, mode: str = "fast", min_side: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Selective search proposals of one image.

    image: [H, W, C] (C = 1 or 3; [H, W] is gray) uint8, or float in [0, 1]; gray images are
    repeated to 3 channels. max_proposals: P, static int >= 1. mode: OpenCV's strategy,
    'fast' (switchToSelectiveSearchFast, R-CNN's), 'quality' or 'single'. min_side: > 0
    upsamples the image (bilinear) so that its shorter side is at least this many pixels
    before the search: the graph segmentation's scale k=150 is meant for images of a few
    hundred pixels and finds few regions in a 64 px one.
    Returns (boxes [P, 4] float32 normalised (y1, x1, y2, x2) in [0, 1], pixel edges;
    valid [P] float32, 1 on the first min(P, found) rows and 0 on zero padding).
    Deterministic; runs single-threaded (cv2.setNumThreads(1): pipeline threads share cores).
    """
    if not isinstance(max_proposals, int) or max_proposals < 1:
        raise ValueError(f"max_proposals must be an int >= 1, got {max_proposals!r}")
    if mode not in MODES:
        raise ValueError(f"selective_search mode must be one of {MODES}, got {mode!r}")
    cv2.setNumThreads(1)
    rgb = _to_uint8_rgb(image)
    h, w = rgb.shape[:2]
    scale = max(1.0, min_side / min(h, w)) if min_side > 0 else 1.0
    if scale > 1.0:
        size = (int(round(w * scale)), int(round(h * scale)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_LINEAR)
    search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    search.setBaseImage(rgb)
    {"fast": search.switchToSelectiveSearchFast,
     "quality": search.switchToSelectiveSearchQuality,
     "single": search.switchToSingleStrategy}[mode]()  # fmt: skip
    rects = np.asarray(search.process(), np.float64).reshape(-1, 4)  # (x, y, w, h)
    sh, sw = rgb.shape[:2]
    boxes = np.stack(
        [rects[:, 1] / sh, rects[:, 0] / sw, (rects[:, 1] + rects[:, 3]) / sh,
         (rects[:, 0] + rects[:, 2]) / sw], axis=-1,
    )  # fmt: skip
    boxes = np.unique(np.clip(boxes, 0.0, 1.0).astype(np.float32), axis=0)
    boxes = _spread(boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])],
                    max_proposals)  # fmt: skip
    out = np.zeros((max_proposals, 4), np.float32)
    valid = np.zeros((max_proposals,), np.float32)
    out[: len(boxes)], valid[: len(boxes)] = boxes, 1.0
    return out, valid
