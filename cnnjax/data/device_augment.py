"""The per-pixel training augmentations of `transforms.py` as jitted batch ops on device.

Why: the host pipeline then only decodes and batches compact uint8 images [B, H, W, C]
(a quarter of the bytes of float32, no per-example numpy work), and the accelerator does
resize, crop, flip, colour jitter, blur, normalisation and noise at the start of the train
step, where it costs little next to the model. The chain and its formulas follow
`transforms.augment_image` + `Classification.preprocess` (uint8 -> resize -> [0, 1] -> crop
-> flip -> jitter -> blur -> normalise -> noise); mixup and cutmix follow timm's batch mode.

Every function is pure, jittable and keeps static shapes; options (padding, sigma, the
`Augment` fields) are Python values, so an op that is off is skipped at trace time.

Randomness: `augment_batch(images, key, ...)` derives each op's per-example keys as

    keys = jax.random.split(jax.random.fold_in(key, op_id), B)    # [B] keys, one per image

with a fixed `op_id` per op (CROP, FLIP, VFLIP, JITTER, BLUR, NOISE below), so the output
depends only on (key, images): a caller that passes `fold_in(run_key, step)` resumes bitwise
exactly, and switching one op off does not change the draws of the others. The ops that take
`keys` expose the parameters they draw (`crop_offsets`, `flip_coins`, `jitter_factors`,
`blur_coins`, `mix_lambda`, `cutmix_box`) so tests can replay them through the numpy ops.
"""

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax.data.transforms import Augment, gaussian_kernel

CROP, FLIP, VFLIP, JITTER, BLUR, NOISE, MIX = range(7)  # op ids for fold_in: never renumber
GREY_WEIGHTS = (0.299, 0.587, 0.114)  # transforms.color_jitter's luma weights


def op_keys(key, op_id: int, batch: int):
    """One PRNG key -> [batch] independent keys for op `op_id` (the derivation above)."""
    return jax.random.split(jax.random.fold_in(key, op_id), batch)


def check_batch(images, where: str, dtype=None) -> None:
    """ValueError naming `where` unless `images` is [B, H, W, C] (of `dtype` when given)."""
    shape = getattr(images, "shape", None)
    if shape is None or len(shape) != 4:
        raise ValueError(f"{where}: images must be [B, H, W, C], got shape {shape}")
    if dtype is not None and images.dtype != dtype:
        raise ValueError(f"{where}: images must be {np.dtype(dtype).name}, got {images.dtype}")


def to_float(images):
    """uint8 [B, H, W, C] -> float32 [B, H, W, C] in [0, 1]."""
    check_batch(images, "to_float", jnp.uint8)
    return images.astype(jnp.float32) * (1.0 / 255.0)


def resize(images, size: int):
    """Bilinear resize of float32 [B, H, W, C] to [B, size, size, C] (no-op at that size).

    `jax.image.resize(method='linear', antialias=True)`: half-pixel centres, a triangle
    kernel widened by the scale factor when downsampling and weights renormalised at the
    borders: the same filter as PIL's BILINEAR, which `transforms.resize` uses (on float
    images, PIL mode 'F', the two agree to 1e-6). PIL resizes uint8 images in two passes and
    rounds to uint8 after each, so against `to_float(transforms.resize(uint8))` the max
    difference is 1/255 (measured on random uint8 images, 8 -> 32 and 32 -> 16: max
    1.0001/255, mean 0.3/255); the device result is the unrounded one.
    """
    check_batch(images, "resize")
    b, h, w, c = images.shape
    if h == size and w == size:
        return images
    return jax.image.resize(images, (b, size, size, c), method="linear", antialias=True)


def center_crop_resize(images, size: int):
    """[B, H, W, C] -> [B, size, size, C]: the central square, then `resize` (the host's
    `transforms.center_crop_resize`; for square images it is plain `resize`)."""
    check_batch(images, "center_crop_resize")
    _, h, w, _ = images.shape
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return resize(images[:, top : top + s, left : left + s], size)


def crop_offsets(keys, padding: int):
    """[B] keys -> int32 [B, 2] (top, left) offsets, each uniform in [0, 2 * padding]."""
    draw = lambda k: jax.random.randint(k, (2,), 0, 2 * padding + 1, dtype=jnp.int32)
    return jax.vmap(draw)(keys)


def random_crop(images, padding: int, keys):
    """Per-example zero-pad by `padding` on each side, then crop an H x W window at
    `crop_offsets(keys, padding)`. images [B, H, W, C], keys [B] -> [B, H, W, C]."""
    check_batch(images, "random_crop")
    if padding < 0:
        raise ValueError(f"random_crop: padding must be >= 0, got {padding!r}")
    if padding == 0:
        return images
    _, h, w, c = images.shape
    p = padding
    padded = jnp.pad(images, ((0, 0), (p, p), (p, p), (0, 0)))
    offsets = crop_offsets(keys, padding)
    crop = lambda x, o: jax.lax.dynamic_slice(x, (o[0], o[1], 0), (h, w, c))
    return jax.vmap(crop)(padded, offsets)


def flip_coins(keys):
    """[B] keys -> bool [B], each True with probability 1/2."""
    return jax.vmap(jax.random.bernoulli)(keys)


def random_flip(images, keys, axis: int = 2):
    """Mirror each image of [B, H, W, C] with probability 1/2 (`flip_coins(keys)`): axis=2
    left-right (horizontal), axis=1 up-down (vertical). Shape preserved."""
    check_batch(images, "random_flip")
    if axis not in (1, 2):
        raise ValueError(f"random_flip: axis must be 1 (up-down) or 2 (left-right), got {axis!r}")
    coins = flip_coins(keys)[:, None, None, None]
    return jnp.where(coins, jnp.flip(images, axis), images)


def jitter_factors(keys, strength: float):
    """[B] keys -> float32 [B, 3] (brightness, contrast, saturation), uniform in [1-s, 1+s]."""
    draw = lambda k: jax.random.uniform(k, (3,), jnp.float32, 1 - strength, 1 + strength)
    return jax.vmap(draw)(keys)


def color_jitter(images, strength: float, keys):
    """Per-example brightness, contrast (around the image mean after brightness) and, for
    RGB, saturation (around the luma grey) by `jitter_factors(keys, strength)`, clipped to
    [0, 1]: `transforms.color_jitter` on a batch. float32 [B, H, W, C] -> same."""
    check_batch(images, "color_jitter")
    if strength < 0:
        raise ValueError(f"color_jitter: strength must be >= 0, got {strength!r}")
    if strength == 0:
        return images
    f = jitter_factors(keys, strength)[:, None, None, None, :]
    x = images * f[..., 0]
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    x = (x - mean) * f[..., 1] + mean
    if x.shape[-1] == 3:
        grey = (x @ jnp.asarray(GREY_WEIGHTS, jnp.float32))[..., None]
        x = (x - grey) * f[..., 2] + grey
    return jnp.clip(x, 0.0, 1.0)


def _blur_axis(images, k: np.ndarray, axis: int):
    """Correlates [B, H, W, C] with the 1-D kernel `k` along `axis`, edge padding."""
    r, n = len(k) // 2, images.shape[axis]
    pad = [(0, 0)] * 4
    pad[axis] = (r, r)
    p = jnp.pad(images, pad, mode="edge")
    return sum(float(k[i]) * jax.lax.slice_in_dim(p, i, i + n, axis=axis) for i in range(len(k)))


def blur(images, sigma: float):
    """Separable Gaussian blur (`transforms.gaussian_kernel(sigma)`, rows then columns, edge
    padding) of float32 [B, H, W, C]; shape preserved."""
    check_batch(images, "blur")
    if sigma <= 0:
        raise ValueError(f"blur: sigma must be > 0, got {sigma!r}")
    k = gaussian_kernel(sigma)
    return _blur_axis(_blur_axis(images, k, 1), k, 2)


def blur_coins(keys, prob: float):
    """[B] keys -> bool [B], each True with probability `prob`."""
    return jax.vmap(lambda k: jax.random.uniform(k) < prob)(keys)


def random_blur(images, prob: float, sigma: float, keys):
    """`blur(images, sigma)` for the examples where `blur_coins(keys, prob)`, others kept.
    float32 [B, H, W, C] -> same. (Under jit the blur is computed for the whole batch.)"""
    check_batch(images, "random_blur")
    if not 0 <= prob <= 1:
        raise ValueError(f"random_blur: prob must be in [0, 1], got {prob!r}")
    if prob == 0:
        return images
    return jnp.where(blur_coins(keys, prob)[:, None, None, None], blur(images, sigma), images)


def normalize(images, mean, std):
    """(images - mean) / std per channel. images float32 [B, H, W, C]; mean, std [C]."""
    check_batch(images, "normalize")
    mean, std = (jnp.asarray(v, jnp.float32) for v in (mean, std))
    return (images - mean) / std


def add_noise(images, std: float, keys):
    """Adds N(0, std^2) noise to every pixel of [B, H, W, C], example b's noise drawn from
    keys[b] (`jax.random.normal(keys[b], (H, W, C)) * std`). Identity when std == 0."""
    check_batch(images, "add_noise")
    if std < 0:
        raise ValueError(f"add_noise: std must be >= 0, got {std!r}")
    if std == 0:
        return images
    noise = jax.vmap(lambda k: jax.random.normal(k, images.shape[1:], jnp.float32))(keys)
    return images + std * noise


def mix_lambda(key, alpha: float):
    """One float32 lambda ~ Beta(alpha, alpha) for the whole batch (timm's 'batch' mode)."""
    if not alpha > 0:
        raise ValueError(f"mixup/cutmix: alpha must be > 0, got {alpha!r}")
    return jax.random.beta(key, alpha, alpha, dtype=jnp.float32)


def cutmix_box(key, lam, height: int, width: int):
    """timm's `cutmix_bbox_and_lam` (correct_lam=True): a box of side int(H sqrt(1-lam)) x
    int(W sqrt(1-lam)) centred uniformly on the image ([cy - cut_h // 2, cy + cut_h // 2)),
    clipped to it -> ((y_lo, y_hi, x_lo, x_hi) int32 scalars, float32 lam = 1 - box area /
    image area after clipping)."""
    ratio = jnp.sqrt(1.0 - lam)
    cut_h = (height * ratio).astype(jnp.int32)
    cut_w = (width * ratio).astype(jnp.int32)
    ky, kx = jax.random.split(key)
    cy = jax.random.randint(ky, (), 0, height, dtype=jnp.int32)
    cx = jax.random.randint(kx, (), 0, width, dtype=jnp.int32)
    y_lo, y_hi = (jnp.clip(cy + d, 0, height) for d in (-(cut_h // 2), cut_h // 2))
    x_lo, x_hi = (jnp.clip(cx + d, 0, width) for d in (-(cut_w // 2), cut_w // 2))
    area = (y_hi - y_lo) * (x_hi - x_lo)
    return (y_lo, y_hi, x_lo, x_hi), 1.0 - area.astype(jnp.float32) / (height * width)


def _check_mix(images, labels, where: str) -> None:
    check_batch(images, where)
    if labels.ndim != 2 or labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"{where}: labels_onehot must be [B, K] with B = {images.shape[0]}, "
            f"got shape {labels.shape}"
        )


def mix_labels(labels_onehot, lam):
    """Soft targets lam * y + (1 - lam) * y[::-1]: [B, K] -> float32 [B, K]."""
    y = labels_onehot.astype(jnp.float32)
    return lam * y + (1.0 - lam) * y[::-1]


def mixup(images, labels_onehot, alpha: float, key):
    """Batch mixup (timm 'batch' mode): images [B, H, W, C] float32, labels_onehot [B, K] ->
    (lam * x + (1 - lam) * x[::-1], soft labels [B, K]) with lam = `mix_lambda(key, alpha)`."""
    _check_mix(images, labels_onehot, "mixup")
    lam = mix_lambda(key, alpha)
    return lam * images + (1.0 - lam) * images[::-1], mix_labels(labels_onehot, lam)


def cutmix(images, labels_onehot, alpha: float, key):
    """Batch cutmix (timm 'batch' mode): one box `cutmix_box` (lambda from
    `mix_lambda(k_lam, alpha)`, `k_lam, k_box = split(key)`) pasted from x[::-1] into every
    image; labels mixed by the clipped box's area. -> (images [B, H, W, C], soft [B, K])."""
    _check_mix(images, labels_onehot, "cutmix")
    k_lam, k_box = jax.random.split(key)
    _, h, w, _ = images.shape
    (y_lo, y_hi, x_lo, x_hi), lam = cutmix_box(k_box, mix_lambda(k_lam, alpha), h, w)
    rows, cols = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
    inside = (rows >= y_lo) & (rows < y_hi) & (cols >= x_lo) & (cols < x_hi)
    mixed = jnp.where(inside[None, :, :, None], images[::-1], images)
    return mixed, mix_labels(labels_onehot, lam)


def mix(images, labels_onehot, aug: Augment, key):
    """The batch mixing `aug` asks for: mixup (aug.mixup_alpha > 0), cutmix (aug.cutmix_alpha
    > 0), or with both one of the two per batch with probability 1/2 each (timm's
    switch_prob 0.5), all from `fold_in(key, MIX)`. images float32 [B, H, W, C], labels_onehot
    [B, K] -> (images, soft labels float32 [B, K]); identity with one-hot labels when both are
    off."""
    if not (aug.mixup_alpha or aug.cutmix_alpha):
        return images, labels_onehot.astype(jnp.float32)
    k_switch, k_mixup, k_cutmix = jax.random.split(jax.random.fold_in(key, MIX), 3)
    if not aug.cutmix_alpha:
        return mixup(images, labels_onehot, aug.mixup_alpha, k_mixup)
    if not aug.mixup_alpha:
        return cutmix(images, labels_onehot, aug.cutmix_alpha, k_cutmix)
    use_cutmix = jax.random.bernoulli(k_switch)
    a = mixup(images, labels_onehot, aug.mixup_alpha, k_mixup)
    b = cutmix(images, labels_onehot, aug.cutmix_alpha, k_cutmix)
    return jax.tree.map(lambda u, v: jnp.where(use_cutmix, v, u), a, b)


def _check_uint8_batch(images, where: str) -> None:
    check_batch(images, where)
    if images.dtype != jnp.uint8:
        raise ValueError(
            f"{where}: images must be uint8 (the host batches raw pixels), got {images.dtype}"
        )


def eval_batch(images_uint8, *, size: int, mean, std):
    """Deterministic evaluation preprocessing: uint8 [B, H, W, C] -> float32 [B, size, size,
    C], centre-cropped square, resized, scaled to [0, 1] and normalised (mean, std: [C])."""
    _check_uint8_batch(images_uint8, "eval_batch")
    return normalize(center_crop_resize(to_float(images_uint8), size), mean, std)


def augment_batch(images_uint8, key, aug: Augment, *, size: int, mean, std):
    """The training chain on device: uint8 [B, H, W, C] -> float32 [B, size, size, C].

    Centre crop + resize, [0, 1], random crop (aug.crop_padding), left-right flip (aug.flip),
    up-down flip (aug.vflip), colour jitter, blur with probability aug.blur_prob, normalise with
    mean/std [C], Gaussian noise (aug.noise_std): the host order. Per-op keys are
    `op_keys(key, OP, B)`; an op whose option is off is not traced at all, so
    `augment_batch(x, key, Augment(), ...)` equals `eval_batch(x, ...)`.
    """
    _check_uint8_batch(images_uint8, "augment_batch")
    b = images_uint8.shape[0]
    x = center_crop_resize(to_float(images_uint8), size)
    if aug.crop_padding:
        x = random_crop(x, aug.crop_padding, op_keys(key, CROP, b))
    if aug.flip:
        x = random_flip(x, op_keys(key, FLIP, b), axis=2)
    if aug.vflip:
        x = random_flip(x, op_keys(key, VFLIP, b), axis=1)
    if aug.color_jitter:
        x = color_jitter(x, aug.color_jitter, op_keys(key, JITTER, b))
    if aug.blur_prob:
        x = random_blur(x, aug.blur_prob, aug.blur_sigma, op_keys(key, BLUR, b))
    x = normalize(x, mean, std)
    if aug.noise_std:
        x = add_noise(x, aug.noise_std, op_keys(key, NOISE, b))
    return x
