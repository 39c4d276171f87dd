"""The embedded detection/segmentation default: 64x64 scenes of real 8x8 digits, as a tfds dataset.

Each scene pastes 0-4 of scikit-learn's handwritten digits (upsampled to 12-28 px, never
overlapping) onto a black canvas and labels them three ways: tight boxes, box classes and a
per-pixel class map with a thin ignore border. Train scenes use only the digits' train split
and test scenes only its test split (`digits.split_indices`), so no digit leaks across. Every
scene is a pure function of (`SEED`, split, index): the same bytes on every machine.
"""

from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from cnnjax.data.digits import load_digits, split_indices

SEED = 1797
CANVAS = 64  # scenes are CANVAS x CANVAS x 1
MIN_SIZE, MAX_SIZE = 12, 28  # side of an upsampled digit, px, both inclusive
MAX_DIGITS = 4
EMPTY_FRACTION = 0.05  # scenes drawn with no digit at all
MAX_TRIES = 30  # placements tried per digit before the scene settles for fewer digits
THRESHOLD = 64  # an upsampled pixel >= THRESHOLD (of 255) is foreground
IGNORE_INDEX = 255
NUM_SCENES = {"train": 3000, "test": 600}
_SPLIT_CODES = {"train": 0, "test": 1}

CLASS_NAMES = [str(d) for d in range(10)]
SEGMENTATION_CLASS_NAMES = ["background", *CLASS_NAMES]


def _bilinear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Half-pixel-centre bilinear taps: (lo [n_out] int, hi [n_out] int, weight of hi [n_out])."""
    src = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0, n_in - 1.0)
    lo = np.floor(src).astype(np.int64)
    return lo, np.minimum(lo + 1, n_in - 1), src - lo


def upsample(digit: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of uint8 [h, w] to [size, size] uint8 (half-pixel centres, edge clamp).

    Element-wise float64 arithmetic only (no BLAS, no PIL), so the bytes never depend on the
    machine or the library version.
    """
    img = digit.astype(np.float64)
    lo, hi, t = _bilinear_taps(img.shape[0], size)
    img = img[lo] * (1.0 - t)[:, None] + img[hi] * t[:, None]
    lo, hi, t = _bilinear_taps(img.shape[1], size)
    img = img[:, lo] * (1.0 - t)[None] + img[:, hi] * t[None]
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _tight_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Bool [h, w] with at least one True -> (top, left, bottom, right), inclusive pixel indices."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]), int(cols[-1])


def _collides(box: tuple[int, int, int, int], placed: list[tuple[int, int, int, int]]) -> bool:
    """Whether `box`, dilated by 1 px, intersects any placed box (all inclusive pixel indices)."""
    top, left, bottom, right = box
    return any(
        top - 1 <= b and t <= bottom + 1 and left - 1 <= r and lf <= right + 1
        for t, lf, b, r in placed
    )


def _draw_placement(rng: np.random.Generator, digit: np.ndarray):
    """Random size and position -> (patch [s, s] uint8, (top, left), tight box in the canvas)."""
    size = int(rng.integers(MIN_SIZE, MAX_SIZE + 1))
    patch = upsample(digit, size)
    top, left = (int(v) for v in rng.integers(0, CANVAS - size + 1, size=2))
    t, lf, b, r = _tight_box(patch >= THRESHOLD)
    return patch, (top, left), (top + t, left + lf, top + b, left + r)


def _dilate(mask: np.ndarray) -> np.ndarray:
    """8-neighbourhood (3x3) binary dilation of bool [H, W] -> bool [H, W]."""
    padded = np.pad(mask, 1)
    h, w = mask.shape
    return np.any([padded[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)], axis=0)


def _num_digits(rng: np.random.Generator) -> int:
    return 0 if rng.random() < EMPTY_FRACTION else int(rng.integers(1, MAX_DIGITS + 1))


def compose_scene(
    rng: np.random.Generator, digit_images: np.ndarray, digit_labels: np.ndarray
) -> dict[str, np.ndarray]:
    """One scene from a pool of digits.

    Args:
      rng: the scene's own generator (every draw of the scene comes from it).
      digit_images: [P, 8, 8] uint8 pool to draw from (with replacement).
      digit_labels: [P] int, their classes 0-9.

    Returns:
      image [64, 64, 1] uint8 (canvas = max over pasted digits); boxes [N, 4] float32,
      normalised (y1, x1, y2, x2) with pixel edges (y2 = (bottom_row + 1) / 64), tight around
      each digit's foreground (upsampled >= THRESHOLD; fainter fringe pixels may lie outside);
      box_classes [N] int64; segmentation [64, 64] uint8 (0 background, class + 1 on foreground,
      IGNORE_INDEX on non-foreground pixels 8-adjacent to a foreground one); digit_ids [N] int64,
      the pool index of each pasted digit. N <= MAX_DIGITS.
    """
    image = np.zeros((CANVAS, CANVAS), np.uint8)
    segmentation = np.zeros((CANVAS, CANVAS), np.uint8)
    placed, classes, ids = [], [], []
    for _ in range(_num_digits(rng)):
        pick = int(rng.integers(len(digit_images)))
        for _ in range(MAX_TRIES):
            patch, (top, left), box = _draw_placement(rng, digit_images[pick])
            if not _collides(box, placed):
                break
        else:
            break  # crowded: this scene keeps the digits already placed
        window = np.s_[top : top + patch.shape[0], left : left + patch.shape[1]]
        image[window] = np.maximum(image[window], patch)
        segmentation[window][patch >= THRESHOLD] = digit_labels[pick] + 1
        placed.append(box)
        classes.append(int(digit_labels[pick]))
        ids.append(pick)
    foreground = segmentation > 0
    segmentation[_dilate(foreground) & ~foreground] = IGNORE_INDEX
    edges = np.asarray(placed, np.float32).reshape(-1, 4) + np.array([0, 0, 1, 1], np.float32)
    return {
        "image": image[..., None],
        "boxes": edges / np.float32(CANVAS),
        "box_classes": np.asarray(classes, np.int64),
        "segmentation": segmentation,
        "digit_ids": np.asarray(ids, np.int64),
    }


def generate_split(
    split: str, images: np.ndarray, labels: np.ndarray
) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """Yields (scene index, scene) for `split` in order; scene i depends only on (SEED, split, i).

    `images` [1797, 8, 8] uint8 and `labels` [1797] are all the digits (`load_digits`); the
    scene draws from `split`'s digits only, and its `digit_ids` are indices into all 1,797.
    """
    pool = split_indices(labels)[split]
    for i in range(NUM_SCENES[split]):
        rng = np.random.default_rng([SEED, _SPLIT_CODES[split], i])
        scene = compose_scene(rng, images[pool], labels[pool])
        yield i, {**scene, "digit_ids": pool[scene["digit_ids"]]}


class DigitsScenes(tfds.core.GeneratorBasedBuilder):
    """64x64 scenes of 0-4 real digits with boxes, box classes and a segmentation map."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {
        "1.0.0": "3,000 train / 600 test scenes from the digits' own split, seed 1797."
    }

    def _info(self):
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(CANVAS, CANVAS, 1), dtype=np.uint8),
                    "boxes": tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
                    "box_classes": tfds.features.Tensor(shape=(None,), dtype=np.int64),
                    "segmentation": tfds.features.Tensor(shape=(CANVAS, CANVAS), dtype=np.uint8),
                }
            ),
            metadata=tfds.core.MetadataDict(
                class_names=CLASS_NAMES,
                segmentation_class_names=SEGMENTATION_CLASS_NAMES,
                ignore_index=IGNORE_INDEX,
                generation=generation_parameters(),
            ),
            disable_shuffling=True,  # record i is scene i: figures and tests can name a scene
            homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download: the digits ship with scikit-learn
        images, labels = load_digits()
        return {split: self._generate_examples(split, images, labels) for split in NUM_SCENES}

    def _generate_examples(self, split, images, labels):
        for i, scene in generate_split(split, images, labels):
            scene.pop("digit_ids")  # provenance for tests, not a feature
            yield i, scene


def generation_parameters() -> dict:
    """The constants a scene depends on, as stored in the dataset's metadata."""
    return {
        "seed": SEED,
        "canvas": CANVAS,
        "digit_size": [MIN_SIZE, MAX_SIZE],
        "max_digits": MAX_DIGITS,
        "empty_fraction": EMPTY_FRACTION,
        "max_tries": MAX_TRIES,
        "foreground_threshold": THRESHOLD,
        "num_scenes": dict(NUM_SCENES),
    }
