"""cnnjax.ops.unpool and cnnjax.ops.align against loop-over-window numpy references and PyTorch's
max_pool2d(return_indices=True) / max_unpool2d, with the gradients of both directions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax.ops import align, unpool

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _x(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# --- independent references: one window at a time ----------------------------------------


def ref_pool(x, k, s, ceil_mode=False):
    """(pooled, switches, grad routing): loops over windows, first maximum in row-major order."""
    b, h, w, c = x.shape
    if ceil_mode:
        oh, ow = -(-(h - k) // s) + 1, -(-(w - k) // s) + 1
        oh, ow = oh - ((oh - 1) * s >= h), ow - ((ow - 1) * s >= w)
    else:
        oh, ow = (h - k) // s + 1, (w - k) // s + 1
    pooled = np.zeros((b, oh, ow, c), x.dtype)
    switches = np.zeros((b, oh, ow, c), np.int64)
    for n in range(b):
        for i in range(oh):
            for j in range(ow):
                for ch in range(c):
                    win = x[n, i * s : i * s + k, j * s : j * s + k, ch]
                    a, bb = np.unravel_index(np.argmax(win), win.shape)
                    pooled[n, i, j, ch] = win[a, bb]
                    switches[n, i, j, ch] = a * k + bb
    return pooled, switches


def ref_unpool(y, switches, k, s, h, w):
    b, oh, ow, c = y.shape
    out = np.zeros((b, h, w, c), y.dtype)
    for n, i, j, ch in np.ndindex(b, oh, ow, c):
        a, bb = divmod(int(switches[n, i, j, ch]), k)
        out[n, i * s + a, j * s + bb, ch] += y[n, i, j, ch]
    return out


def _torch_pool(x, k, s, ceil_mode=False):
    t = torch.from_numpy(x).permute(0, 3, 1, 2)
    pooled, idx = F.max_pool2d(t, k, s, ceil_mode=ceil_mode, return_indices=True)
    unpooled = F.max_unpool2d(pooled, idx, k, s, output_size=t.shape[-2:])
    nhwc = lambda a: a.permute(0, 2, 3, 1).numpy()  # noqa: E731
    return nhwc(pooled), nhwc(idx), nhwc(unpooled)


# --- max_pool_with_switches / max_unpool ---------------------------------------------------


@pytest.mark.parametrize(
    "hw, k, s, ceil_mode",
    [((8, 8), 2, 2, False), ((7, 9), 2, 2, False), ((7, 9), 2, 2, True), ((9, 7), 3, 2, True)],
)
def test_pool_and_unpool_match_references(hw, k, s, ceil_mode):
    x = _x((2, *hw, 3))
    pooled, switches = unpool.max_pool_with_switches(x, k, s, ceil_mode=ceil_mode)
    want_pooled, want_switches = ref_pool(x, k, s, ceil_mode)
    np.testing.assert_array_equal(np.asarray(pooled), want_pooled)
    np.testing.assert_array_equal(np.asarray(switches), want_switches)
    assert switches.dtype == jnp.int32
    out = unpool.max_unpool(pooled, switches, hw, k, s)
    np.testing.assert_array_equal(
        np.asarray(out), ref_unpool(want_pooled, want_switches, k, s, *hw)
    )


@pytest.mark.parametrize("hw, ceil_mode", [((8, 10), False), ((7, 9), False), ((7, 9), True)])
def test_against_torch_pool_indices_and_unpool(hw, ceil_mode):
    x = _x((2, *hw, 4), seed=1)
    pooled, switches = unpool.max_pool_with_switches(x, 2, 2, ceil_mode=ceil_mode)
    t_pooled, t_idx, t_unpooled = _torch_pool(x, 2, 2, ceil_mode)
    np.testing.assert_array_equal(np.asarray(pooled), t_pooled)
    # Our in-window switch -> PyTorch's flat index (i * s + a) * W + (j * s + b).
    oh, ow = pooled.shape[1:3]
    a, b = np.divmod(np.asarray(switches), 2)
    rows = 2 * np.arange(oh)[None, :, None, None] + a
    cols = 2 * np.arange(ow)[None, None, :, None] + b
    np.testing.assert_array_equal(rows * hw[1] + cols, t_idx)
    got = unpool.max_unpool(pooled, switches, x.shape)  # the full shape works too
    np.testing.assert_array_equal(np.asarray(got), t_unpooled)


def test_floor_mode_leaves_dropped_border_zero():
    x = _x((1, 5, 5, 2)) + 10.0  # every value positive: zeros can only come from unpooling
    pooled, switches = unpool.max_pool_with_switches(x)
    out = np.asarray(unpool.max_unpool(pooled, switches, (5, 5)))
    assert pooled.shape == (1, 2, 2, 2) and out.shape == (1, 5, 5, 2)
    assert not out[:, 4].any() and not out[:, :, 4].any()
    assert (out[:, :4, :4] != 0).sum() == pooled.size  # one value per window


def test_pool_gradient_goes_to_the_switch_like_torch():
    x = _x((2, 7, 6, 3), seed=2)
    x[0, 0, 0, 0] = x[0, 0, 1, 0] = 5.0  # a tie: the first maximum takes the whole gradient
    g = _x((2, 3, 3, 3), seed=3)
    _, vjp = jax.vjp(lambda v: unpool.max_pool_with_switches(v)[0], jnp.asarray(x))
    (got,) = vjp(jnp.asarray(g))
    _, switches = ref_pool(x, 2, 2)
    np.testing.assert_allclose(np.asarray(got), ref_unpool(g, switches, 2, 2, 7, 6))
    assert got[0, 0, 0, 0] == g[0, 0, 0, 0] and got[0, 0, 1, 0] == 0
    t = torch.from_numpy(x).permute(0, 3, 1, 2).requires_grad_()
    F.max_pool2d(t, 2, 2).backward(torch.from_numpy(g).permute(0, 3, 1, 2))
    np.testing.assert_allclose(np.asarray(got), t.grad.permute(0, 2, 3, 1).numpy())


def test_unpool_gradient_gathers_at_the_switches():
    x = _x((2, 6, 7, 3), seed=4)
    pooled, switches = unpool.max_pool_with_switches(x)
    g = _x(x.shape, seed=5)
    _, vjp = jax.vjp(lambda y: unpool.max_unpool(y, switches, (6, 7)), pooled)
    (got,) = vjp(jnp.asarray(g))
    a, b = np.divmod(np.asarray(switches), 2)
    n, i, j, c = np.indices(pooled.shape)
    np.testing.assert_allclose(np.asarray(got), g[n, 2 * i + a, 2 * j + b, c])


def test_overlapping_windows_add_up_and_bad_shapes_raise():
    x = np.zeros((1, 3, 3, 1), np.float32)
    x[0, 1, 1, 0] = 1.0  # the maximum of all four 2x2 stride-1 windows
    pooled, switches = unpool.max_pool_with_switches(x, 2, 1)
    assert np.asarray(unpool.max_unpool(pooled, switches, (3, 3), 2, 1))[0, 1, 1, 0] == 4.0
    with pytest.raises(ValueError, match="does not fit"):
        unpool.max_pool_with_switches(np.zeros((1, 1, 4, 1)), 2, 2)
    with pytest.raises(ValueError, match="one shape"):
        unpool.max_unpool(pooled, switches[..., :0], (3, 3))
    with pytest.raises(ValueError, match="cannot come from"):
        unpool.max_unpool(pooled, switches, (1, 3), 2, 1)


def test_pool_runs_under_jit_with_leading_dims():
    x = _x((2, 3, 6, 6, 2))
    pooled, switches = jax.jit(unpool.max_pool_with_switches)(x)
    want, _ = ref_pool(x.reshape(6, 6, 6, 2), 2, 2)
    np.testing.assert_array_equal(np.asarray(pooled).reshape(6, 3, 3, 2), want)
    out = jax.jit(unpool.max_unpool, static_argnums=2)(pooled, switches, (6, 6))
    assert out.shape == x.shape


# --- align ------------------------------------------------------------------------------------


def test_center_crop_and_crop_to():
    x = np.arange(2 * 7 * 6 * 3, dtype=np.float32).reshape(2, 7, 6, 3)
    np.testing.assert_array_equal(np.asarray(align.center_crop(x, 4, 3)), x[:, 1:5, 1:4])
    like = np.zeros((5, 2, 2, 9))
    np.testing.assert_array_equal(np.asarray(align.crop_to(x, like)), x[:, 2:4, 2:4])
    np.testing.assert_array_equal(np.asarray(align.center_crop(x, 7, 6)), x)
    with pytest.raises(ValueError, match="cannot crop"):
        align.center_crop(x, 8, 6)


def test_crop_offset_is_caffes_crop():
    x = np.random.default_rng(0).standard_normal((1, 40, 40, 2)).astype(np.float32)
    like = jax.ShapeDtypeStruct((1, 16, 20, 5), jnp.float32)
    got = align.crop_offset(x, like, 19)
    np.testing.assert_array_equal(np.asarray(got), x[:, 19:35, 19:39])
    got = align.crop_offset(x, like, (5, 9))
    np.testing.assert_array_equal(np.asarray(got), x[:, 5:21, 9:29])
    np.testing.assert_array_equal(np.asarray(align.crop_offset(x, x)), x)
    with pytest.raises(ValueError, match="cannot crop"):
        align.crop_offset(x, like, (0, 21))
    with pytest.raises(ValueError, match="non-negative"):
        align.crop_offset(x, like, -1)


def test_pad_to_centres_with_the_extra_pixel_bottom_right():
    x = np.ones((1, 3, 4, 2), np.float32)
    got = np.asarray(align.pad_to(x, np.zeros((1, 6, 5, 1)), value=-1))
    assert got.shape == (1, 6, 5, 2)
    want = np.full((1, 6, 5, 2), -1, np.float32)
    want[:, 1:4, 0:4] = 1
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(np.asarray(align.crop_offset(got, x, (1, 0))), x)
    with pytest.raises(ValueError, match="cannot shrink"):
        align.pad_to(x, np.zeros((1, 2, 4, 1)))


def test_align_gradients_and_jit():
    x = jnp.asarray(_x((2, 6, 5, 3)))
    like = jnp.zeros((2, 4, 4, 3))
    grad = jax.grad(lambda v: jax.jit(align.crop_to)(v, like).sum())(x)
    want = np.zeros(x.shape, np.float32)
    want[:, 1:5, 0:4] = 1
    np.testing.assert_array_equal(np.asarray(grad), want)
    grad = jax.grad(lambda v: (align.pad_to(v, jnp.zeros((1, 9, 9, 1))) * 2).sum())(x)
    np.testing.assert_array_equal(np.asarray(grad), np.full(x.shape, 2.0))
