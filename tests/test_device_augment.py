"""Device-side batch augmentations (cnnjax.data.device_augment) against the host's numpy
transforms, replayed with the parameters the JAX ops drew."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from cnnjax.data import device_augment as D
from cnnjax.data import transforms as T

B, H, C = 8, 16, 3
MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)
_NS = {"mean": MEAN, "std": STD}


class ReplayRng:
    """A numpy-Generator stand-in that hands transforms.py pre-drawn values, in call order."""

    def __init__(self, integers=(), random=(), uniform=(), normal=()):
        self.queues = {
            "integers": list(integers),
            "random": list(random),
            "uniform": list(uniform),
            "normal": list(normal),
        }

    def _next(self, name):
        return self.queues[name].pop(0)

    def integers(self, lo, hi, size=None):
        return np.asarray(self._next("integers"))

    def random(self):
        return float(self._next("random"))

    def uniform(self, lo, hi, size=None):
        return np.asarray(self._next("uniform"), np.float64)

    def normal(self, loc, scale, size=None):
        return loc + scale * np.asarray(self._next("normal"), np.float64)

    def exhausted(self) -> bool:
        return not any(self.queues.values())


def coin_value(coin) -> float:
    """The host's `rng.random() < p` outcome `coin` as a uniform draw."""
    return 0.0 if coin else 0.999999


def uint8_batch(seed=0, shape=(B, H, H, C)):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def float_batch(seed=0, shape=(B, H, H, C)):
    return T.to_float(uint8_batch(seed, shape))


def keys(seed=0, n=B):
    return jax.random.split(jax.random.PRNGKey(seed), n)


def test_to_float_matches_host():
    x = uint8_batch()
    np.testing.assert_array_equal(np.asarray(D.to_float(x)), T.to_float(x))


def pil_float_resize(images: np.ndarray, size: int) -> np.ndarray:
    """PIL BILINEAR on float planes (mode 'F', no uint8 rounding): [B, H, W, C] -> resized."""
    plane = lambda p: np.asarray(Image.fromarray(p, mode="F").resize((size, size), 2))
    return np.stack([np.stack([plane(im[..., k]) for k in range(C)], -1) for im in images])


@pytest.mark.parametrize("src,dst", [(8, 32), (32, 16)])
def test_resize_is_pil_bilinear(src, dst):
    x = uint8_batch(1, (4, src, src, C))
    out = np.asarray(D.resize(D.to_float(x), dst))
    assert out.shape == (4, dst, dst, C)
    # The same filter as PIL's on float images ...
    np.testing.assert_allclose(out, pil_float_resize(T.to_float(x), dst), atol=1e-5)
    # ... and within PIL's uint8 rounding of the host path (measured: max 1.0001/255).
    host = np.stack([T.to_float(T.resize(im, dst)) for im in x])
    diff = np.abs(out - host)
    assert diff.max() <= 1 / 255 + 1e-5, diff.max() * 255
    assert diff.mean() <= 0.4 / 255, diff.mean() * 255


def test_resize_same_size_is_identity_and_center_crop_matches_host():
    x = D.to_float(uint8_batch())
    assert D.resize(x, H) is x
    wide = uint8_batch(2, (2, 12, 20, C))
    out = np.asarray(D.center_crop_resize(D.to_float(wide), 12))
    host = np.stack([T.to_float(T.center_crop_resize(im, 12)) for im in wide])
    np.testing.assert_array_equal(out, host)  # 12 x 12 centre square: no resize needed
    out = np.asarray(D.center_crop_resize(D.to_float(wide), 8))
    host = np.stack([T.to_float(T.center_crop_resize(im, 8)) for im in wide])
    assert np.abs(out - host).max() <= 1 / 255 + 1e-5


def test_random_crop_replays_host():
    x, k = float_batch(), keys(3)
    offsets = np.asarray(D.crop_offsets(k, 3))
    out = np.asarray(D.random_crop(x, 3, k))
    for b in range(B):
        want = T.random_crop(x[b], 3, ReplayRng(integers=[offsets[b]]))
        np.testing.assert_array_equal(out[b], want)


def test_random_flip_replays_host_both_axes():
    x, k = float_batch(), keys(4)
    coins = np.asarray(D.flip_coins(k))
    assert 0 < coins.sum() < B  # both outcomes occur, so the test can tell them apart
    lr, ud = np.asarray(D.random_flip(x, k, axis=2)), np.asarray(D.random_flip(x, k, axis=1))
    for b in range(B):
        want = T.random_flip(x[b], ReplayRng(random=[coin_value(coins[b])]))
        np.testing.assert_array_equal(lr[b], want)
        np.testing.assert_array_equal(ud[b], x[b, ::-1] if coins[b] else x[b])


@pytest.mark.parametrize("channels", [3, 1])
def test_color_jitter_replays_host(channels):
    x, k = float_batch(5, (B, H, H, channels)), keys(5)
    factors = np.asarray(D.jitter_factors(k, 0.4))
    assert factors.shape == (B, 3) and np.all(np.abs(factors - 1) <= 0.4)
    out = np.asarray(D.color_jitter(x, 0.4, k))
    for b in range(B):
        want = T.color_jitter(x[b], 0.4, ReplayRng(uniform=[factors[b]]))
        np.testing.assert_allclose(out[b], want, atol=1e-5)
    assert out.min() >= 0 and out.max() <= 1


def test_blur_and_random_blur_replay_host():
    x, k = float_batch(6), keys(6)
    blurred = np.asarray(D.blur(x, 1.5))
    for b in range(B):
        np.testing.assert_allclose(blurred[b], T.blur(x[b], 1.5), atol=1e-5)
    coins = np.asarray(D.blur_coins(k, 0.5))
    assert 0 < coins.sum() < B
    out = np.asarray(D.random_blur(x, 0.5, 1.5, k))
    for b in range(B):
        np.testing.assert_array_equal(out[b], blurred[b] if coins[b] else x[b])


def test_normalize_and_add_noise():
    x, k = float_batch(7), keys(7)
    mean, std = np.float32(MEAN), np.float32(STD)
    np.testing.assert_allclose(D.normalize(x, mean, std), T.normalize(x, mean, std), atol=1e-6)
    noisy = np.asarray(D.add_noise(x, 0.1, k))
    for b in range(B):
        z = np.asarray(jax.random.normal(k[b], x.shape[1:]))
        np.testing.assert_allclose(
            noisy[b], T.add_noise(x[b], 0.1, ReplayRng(normal=[z])), atol=1e-5
        )
    assert abs((noisy - x).std() - 0.1) < 0.01
    assert not np.array_equal(noisy[0] - x[0], noisy[1] - x[1])  # independent per example


def host_chain(image, aug, draws, b, mean, std):
    """Classification.preprocess's numpy chain for example b, fed the device's draws."""
    rng = ReplayRng(
        integers=[draws["crop"][b]],
        random=[coin_value(draws["flip"][b]), coin_value(draws["blur"][b])],
        uniform=[draws["jitter"][b]],
        normal=[draws["noise"][b]],
    )
    x = T.augment_image(T.to_float(image), aug, rng)
    x = T.add_noise(T.normalize(x, mean, std), aug.noise_std, rng)
    assert rng.exhausted()
    return x


def test_augment_batch_replays_the_host_chain():
    aug = T.Augment(crop_padding=2, flip=True, noise_std=0.05, blur_prob=0.5, color_jitter=0.3)
    x, key = uint8_batch(8), jax.random.PRNGKey(8)
    k = lambda op: D.op_keys(key, op, B)
    draws = {
        "crop": np.asarray(D.crop_offsets(k(D.CROP), 2)),
        "flip": np.asarray(D.flip_coins(k(D.FLIP))),
        "jitter": np.asarray(D.jitter_factors(k(D.JITTER), 0.3)),
        "blur": np.asarray(D.blur_coins(k(D.BLUR), 0.5)),
        "noise": np.asarray(jax.vmap(lambda q: jax.random.normal(q, (H, H, C)))(k(D.NOISE))),
    }
    out = np.asarray(D.augment_batch(x, key, aug, size=H, mean=MEAN, std=STD))
    mean, std = np.float32(MEAN), np.float32(STD)
    for b in range(B):
        np.testing.assert_allclose(out[b], host_chain(x[b], aug, draws, b, mean, std), atol=1e-4)


def test_flip_fraction_crop_range_and_blur_rate_over_512():
    k = keys(9, 512)
    assert abs(np.asarray(D.flip_coins(k)).mean() - 0.5) < 0.07
    offsets = np.asarray(D.crop_offsets(k, 2))
    for col in offsets.T:
        assert set(col.tolist()) == {0, 1, 2, 3, 4}
    assert abs(np.asarray(D.blur_coins(k, 0.2)).mean() - 0.2) < 0.06


def onehot(labels, k):
    return np.eye(k, dtype=np.float32)[labels]


def test_mixup_blends_with_the_flipped_batch():
    x, y = float_batch(10), onehot(np.arange(B), B)
    out, soft = (np.asarray(a) for a in D.mixup(x, y, 0.4, jax.random.PRNGKey(10)))
    lam = soft[0, 0]
    assert 0 < lam < 1
    np.testing.assert_allclose(soft.sum(1), 1, atol=1e-6)
    np.testing.assert_allclose(soft, lam * y + (1 - lam) * y[::-1], atol=1e-6)
    np.testing.assert_allclose(out, lam * x + (1 - lam) * x[::-1], atol=1e-6)
    lams = jax.vmap(lambda q: D.mix_lambda(q, 1.0))(keys(11, 512))
    assert abs(float(lams.mean()) - 0.5) < 0.05  # Beta(1, 1) = uniform


def test_cutmix_label_weight_is_the_pasted_pixel_fraction():
    # Example b is the constant b, so every output pixel tells which image it came from.
    x = np.broadcast_to(np.arange(B, dtype=np.float32)[:, None, None, None], (B, 20, 24, C))
    y = onehot(np.arange(B), B)
    lams = set()
    for seed in range(8):
        out, soft = (np.asarray(a) for a in D.cutmix(x, y, 1.0, jax.random.PRNGKey(seed)))
        np.testing.assert_allclose(soft.sum(1), 1, atol=1e-6)
        pasted = out == x[::-1]
        assert np.all(pasted | (out == x))
        np.testing.assert_array_equal(pasted, np.broadcast_to(pasted[:1], pasted.shape))
        lam = float(soft[0, 0])
        np.testing.assert_allclose(soft, lam * y + (1 - lam) * y[::-1], atol=1e-6)
        count = int(pasted[0, ..., 0].sum())
        assert count == round((1 - lam) * 480) and abs(count / 480 - (1 - lam)) < 1e-6
        rows, cols = np.nonzero(pasted[0, ..., 0])
        if count:  # one rectangle
            assert count == (np.ptp(rows) + 1) * (np.ptp(cols) + 1)
        lams.add(lam)
    assert len(lams) > 4


def test_cutmix_box_follows_timm():
    clipped = set()
    for seed in range(64):
        (y0, y1, x0, x1), lam = D.cutmix_box(jax.random.PRNGKey(seed), 0.75, 32, 40)
        y0, y1, x0, x1 = (int(v) for v in (y0, y1, x0, x1))
        # sqrt(1 - 0.75) = 0.5: half-sides 8 and 10 around a centre, clipped to the image.
        assert 0 <= y0 <= y1 <= 32 and 0 <= x0 <= x1 <= 40
        assert y1 - y0 == 16 or y0 == 0 or y1 == 32
        assert x1 - x0 == 20 or x0 == 0 or x1 == 40
        assert abs(float(lam) - (1 - (y1 - y0) * (x1 - x0) / (32 * 40))) < 1e-6
        clipped.add((y1 - y0, x1 - x0) != (16, 20))
    assert clipped == {True, False}  # both whole and border-clipped boxes were drawn


FULL = T.Augment(
    crop_padding=2, flip=True, vflip=True, noise_std=0.1, blur_prob=0.5, color_jitter=0.3
)


def run_full(x, key, jit=False):
    f = functools.partial(D.augment_batch, aug=FULL, size=12, mean=MEAN, std=STD)
    return np.asarray((jax.jit(f) if jit else f)(x, key))


def test_augment_batch_is_deterministic_in_the_key():
    x = uint8_batch(12)
    key = jax.random.fold_in(jax.random.PRNGKey(0), 17)  # (run seed, step)
    a, b = run_full(x, key), run_full(x, key)
    assert a.shape == (B, 12, 12, C) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, run_full(x, jax.random.fold_in(jax.random.PRNGKey(0), 18)))
    np.testing.assert_allclose(run_full(x, key, jit=True), a, atol=1e-5)
    typed = D.augment_batch(x, jax.random.key(3), FULL, size=12, **_NS)  # new-style keys
    assert np.isfinite(np.asarray(typed)).all()


def test_ops_off_are_identity():
    x8 = uint8_batch(13)
    key = jax.random.PRNGKey(13)
    off = D.augment_batch(x8, key, T.Augment(), size=12, mean=MEAN, std=STD)
    np.testing.assert_array_equal(np.asarray(off), np.asarray(D.eval_batch(x8, size=12, **_NS)))
    x, k = jnp.asarray(float_batch(13)), keys(13)
    assert D.random_crop(x, 0, k) is x and D.color_jitter(x, 0.0, k) is x
    assert D.random_blur(x, 0.0, 1.0, k) is x and D.add_noise(x, 0.0, k) is x


@pytest.mark.parametrize(
    "call,match",
    [
        (
            lambda: D.augment_batch(float_batch(), jax.random.PRNGKey(0), FULL, size=H, **_NS),
            "float32",
        ),
        (lambda: D.eval_batch(uint8_batch()[0], size=H, **_NS), r"\(16, 16, 3\)"),
        (lambda: D.eval_batch(uint8_batch().astype(np.int32), size=H, **_NS), "int32"),
        (lambda: D.random_crop(float_batch(), -1, keys()), "padding must be >= 0, got -1"),
        (lambda: D.random_flip(float_batch(), keys(), axis=3), "got 3"),
        (lambda: D.mixup(float_batch(), onehot(np.arange(B), B), 0.0, keys()[0]), "got 0.0"),
        (lambda: D.cutmix(float_batch(), onehot(np.arange(B), B), -1.0, keys()[0]), "got -1.0"),
        (lambda: D.mixup(float_batch(), np.arange(B), 1.0, keys()[0]), r"got shape \(8,\)"),
        (lambda: D.color_jitter(float_batch(), -0.1, keys()), "got -0.1"),
    ],
)
def test_bad_input_raises_value_error_naming_it(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize(
    "mixup_alpha, cutmix_alpha", [(0.0, 0.0), (0.8, 0.0), (0.0, 1.0), (0.8, 1.0)]
)
def test_mix_follows_its_settings_and_keeps_label_sums(mixup_alpha, cutmix_alpha):
    """timm's defaults for ImageNet (mixup 0.8, cutmix 1.0, switch 0.5): labels stay
    distributions; with one of the two on, `mix` is exactly that op on its own key."""
    aug = T.Augment(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha)
    x, y = jnp.asarray(float_batch(21)), onehot(np.arange(B) % 5, 5)
    key = jax.random.PRNGKey(21)
    images, soft = D.mix(x, y, aug, key)
    np.testing.assert_allclose(np.asarray(soft).sum(-1), 1.0, atol=1e-6)
    _, k_mixup, k_cutmix = jax.random.split(jax.random.fold_in(key, D.MIX), 3)
    if not (mixup_alpha or cutmix_alpha):
        assert images is x
        np.testing.assert_array_equal(np.asarray(soft), y)
    elif not cutmix_alpha:
        want = D.mixup(x, y, mixup_alpha, k_mixup)
        np.testing.assert_array_equal(np.asarray(images), np.asarray(want[0]))
    elif not mixup_alpha:
        want = D.cutmix(x, y, cutmix_alpha, k_cutmix)
        np.testing.assert_array_equal(np.asarray(soft), np.asarray(want[1]))
    else:  # over many keys both ops are chosen
        chosen = set()
        for seed in range(16):
            k = jax.random.PRNGKey(seed)
            _, km, kc = jax.random.split(jax.random.fold_in(k, D.MIX), 3)
            got = np.asarray(D.mix(x, y, aug, k)[0])
            chosen |= {
                name
                for name, (want, _) in (("mixup", D.mixup(x, y, 0.8, km)),
                                        ("cutmix", D.cutmix(x, y, 1.0, kc)))
                if np.array_equal(got, np.asarray(want))
            }  # fmt: skip
        assert chosen == {"mixup", "cutmix"}
