"""Per-example image transforms (numpy, host side) from the course's augmentation lecture.

Images are float32 [H, W, C] in [0, 1] unless stated; `rng` is a numpy Generator that
grain derives deterministically from the pipeline seed and the element's index.
"""

import dataclasses

import numpy as np
from PIL import Image


@dataclasses.dataclass(frozen=True)
class Augment:
    """The course's per-example augmentations (config group `data.aug`), host side.

    crop_padding: random crop after zero-padding by this many pixels; flip: random
    left-right mirror; vflip: random up-down mirror; noise_std: Gaussian noise in units of
    the normalised image; blur_prob / blur_sigma: Gaussian blur; color_jitter:
    brightness/contrast/saturation strength (0 = off); mixup_alpha / cutmix_alpha: batch
    mixup / cutmix with labels mixed alike (Beta(alpha, alpha); 0 = off; both on: one of the
    two per batch, timm's switch), for tasks that mix (classification, on device).
    """

    crop_padding: int = 0
    flip: bool = False
    vflip: bool = False
    noise_std: float = 0.0
    blur_prob: float = 0.0
    blur_sigma: float = 1.0
    color_jitter: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0


def check_image(image, index: int, channels: int) -> None:
    """ValueError naming record `index` unless `image` is uint8 [H, W, channels]."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3:
        got = f"{getattr(image, 'dtype', type(image))} {getattr(image, 'shape', '')}"
        raise ValueError(f"record {index}: image must be uint8 [H, W, C], got {got}")
    if image.shape[-1] != channels:
        raise ValueError(
            f"record {index}: image has {image.shape[-1]} channels, dataset declares {channels}"
        )


def augment_image(image: np.ndarray, aug: Augment, rng: np.random.Generator) -> np.ndarray:
    """float32 [H, W, C] in [0, 1] -> the same after random crop, flip, jitter and blur
    (in that order; `add_noise` comes after normalisation)."""
    image = random_crop(image, aug.crop_padding, rng)
    if aug.flip:
        image = random_flip(image, rng)
    if aug.vflip:
        image = random_flip(image, rng, axis=0)
    return photometric(image, aug, rng)


def photometric(image: np.ndarray, aug: Augment, rng: np.random.Generator) -> np.ndarray:
    """float32 [H, W, C] in [0, 1] -> the same after colour jitter and blur (the pixel-only
    augmentations, which leave boxes and masks where they are)."""
    image = color_jitter(image, aug.color_jitter, rng)
    if aug.blur_prob > 0 and rng.random() < aug.blur_prob:
        image = blur(image, aug.blur_sigma)
    return image


def to_float(image: np.ndarray) -> np.ndarray:
    """uint8 [H, W, C] -> float32 [H, W, C] in [0, 1]."""
    return image.astype(np.float32) * (1.0 / 255.0)


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of uint8 [H, W, C] to [size, size, C] (no-op when already that size)."""
    h, w, c = image.shape
    if h == size and w == size:
        return image
    planes = [
        np.asarray(Image.fromarray(image[..., k]).resize((size, size), Image.BILINEAR))
        for k in range(c)
    ]
    return np.stack(planes, axis=-1)


def center_crop_resize(image: np.ndarray, size: int) -> np.ndarray:
    """Resize the shorter side of uint8 [H, W, C] to `size`, then take the central square."""
    h, w, c = image.shape
    if h == w:
        return resize(image, size)
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return resize(image[top : top + s, left : left + s], size)


def random_crop(image: np.ndarray, padding: int, rng: np.random.Generator) -> np.ndarray:
    """Zero-pad [H, W, C] by `padding` on each side, then crop a random H x W window."""
    if padding <= 0:
        return image
    h, w, _ = image.shape
    padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
    top, left = rng.integers(0, 2 * padding + 1, size=2)
    return padded[top : top + h, left : left + w]


def random_flip(image: np.ndarray, rng: np.random.Generator, axis: int = 1) -> np.ndarray:
    """Mirror [H, W, C] with probability 1/2: left-right (axis 1) or up-down (axis 0)."""
    return np.flip(image, axis) if rng.random() < 0.5 else image


def color_jitter(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Random brightness, contrast and (for RGB) saturation factors in [1-s, 1+s]."""
    if strength <= 0:
        return image
    b, c, s = rng.uniform(1 - strength, 1 + strength, size=3)
    image = image * b
    mean = image.mean()
    image = (image - mean) * c + mean
    if image.shape[-1] == 3:
        grey = image @ np.array([0.299, 0.587, 0.114], np.float32)
        image = (image - grey[..., None]) * s + grey[..., None]
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def gaussian_kernel(sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian [2*ceil(2 sigma)+1] float32."""
    r = max(1, int(np.ceil(2 * sigma)))
    x = np.arange(-r, r + 1, dtype=np.float32)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of [H, W, C] with edge padding; shape preserved."""
    k = gaussian_kernel(sigma)
    r = len(k) // 2
    p = np.pad(image, ((r, r), (0, 0), (0, 0)), mode="edge")
    image = sum(k[i] * p[i : i + image.shape[0]] for i in range(len(k)))
    p = np.pad(image, ((0, 0), (r, r), (0, 0)), mode="edge")
    return sum(k[i] * p[:, i : i + image.shape[1]] for i in range(len(k))).astype(np.float32)


def normalize(image: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(image - mean) / std per channel; mean and std are [C] float32."""
    return ((image - mean) / std).astype(np.float32)


def add_noise(image: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    """Adds N(0, std^2) noise to every pixel."""
    if std <= 0:
        return image
    return (image + rng.normal(0.0, std, image.shape)).astype(np.float32)
