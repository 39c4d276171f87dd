"""cnnjax.ops.atrous against a loop-over-output-pixel numpy reference and PyTorch's dilated
F.conv2d, values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax.ops.atrous import atrous_conv, effective_kernel


def _arrays(x_shape, k_shape, seed=0):
    kx, kk = jax.random.split(jax.random.key(seed))
    return jax.random.normal(kx, x_shape), jax.random.normal(kk, k_shape)


def ref_atrous(x, kernel, rate, pads, stride=1):
    """Per output pixel: the sum over taps a, c of xp[i*s + a*rate, j*s + c*rate] @ K[a, c]."""
    x, kernel = np.asarray(x, np.float64), np.asarray(kernel, np.float64)
    (top, bottom), (left, right) = pads
    xp = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    k = kernel.shape[0]
    span = effective_kernel(k, rate)
    ho = (xp.shape[1] - span) // stride + 1
    wo = (xp.shape[2] - span) // stride + 1
    out = np.zeros((x.shape[0], ho, wo, kernel.shape[-1]))
    for i in range(ho):
        for j in range(wo):
            for a in range(k):
                for c in range(k):
                    pixel = xp[:, i * stride + a * rate, j * stride + c * rate, :]
                    out[:, i, j] += pixel @ kernel[a, c]
    return out


def test_effective_kernel():
    assert [effective_kernel(3, r) for r in (1, 2, 6, 12, 18)] == [3, 5, 13, 25, 37]
    assert effective_kernel(1, 24) == 1 and effective_kernel(5, 3) == 13
    for bad in ((3, 0), (0, 2), (3, 1.5), (True, 2)):
        with pytest.raises(ValueError, match="positive int"):
            effective_kernel(*bad)


@pytest.mark.parametrize(
    ("rate", "padding", "pads", "stride"),
    [
        (1, "SAME", ((1, 1), (1, 1)), 1),
        (2, "SAME", ((2, 2), (2, 2)), 1),
        (3, "VALID", ((0, 0), (0, 0)), 1),
        (2, 1, ((1, 1), (1, 1)), 1),  # PyTorch-style int padding, smaller than the rate
        (2, ((3, 1), (0, 2)), ((3, 1), (0, 2)), 1),
        (2, "SAME", None, 2),
    ],
)
def test_matches_the_loop_reference(rate, padding, pads, stride):
    x, kernel = _arrays((2, 11, 9, 3), (3, 3, 3, 4))
    got = atrous_conv(x, kernel, rate, padding, stride=stride)
    if pads is None:  # SAME at stride 2: XLA puts the odd pixel of padding at the end
        total = [max((-(-n // stride) - 1) * stride + effective_kernel(3, rate) - n, 0)
                 for n in x.shape[1:3]]  # fmt: skip
        pads = [(t // 2, t - t // 2) for t in total]
    want = ref_atrous(x, kernel, rate, pads, stride)
    assert got.shape == want.shape
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, rtol=1e-4)


def test_same_padding_keeps_the_size_and_is_torch_padding_rate():
    x, kernel = _arrays((1, 16, 16, 2), (3, 3, 2, 2))
    for rate in (1, 6, 12):
        same = atrous_conv(x, kernel, rate)
        assert same.shape == (1, 16, 16, 2)
        np.testing.assert_array_equal(
            np.asarray(same), np.asarray(atrous_conv(x, kernel, rate, rate))
        )
    # Only the centre tap: the identity at any rate (the other taps read the zero padding).
    single = jnp.zeros((3, 3, 1, 1)).at[1, 1, 0, 0].set(1.0)
    np.testing.assert_array_equal(np.asarray(atrous_conv(x[..., :1], single, 12)), x[..., :1])


@pytest.mark.parametrize(("rate", "padding", "stride"), [(2, 2, 1), (4, 0, 1), (3, 3, 2)])
def test_values_and_gradients_match_torch(rate, padding, stride):
    torch = pytest.importorskip("torch")
    x, kernel = _arrays((2, 13, 12, 3), (3, 3, 3, 5), seed=1)
    out = atrous_conv(x, kernel, rate, padding, stride=stride)
    weights = jax.random.normal(jax.random.key(2), out.shape)
    loss = lambda x, k: jnp.sum(atrous_conv(x, k, rate, padding, stride=stride) * weights)
    gx, gk = jax.grad(loss, argnums=(0, 1))(x, kernel)

    tx = torch.tensor(np.asarray(x).transpose(0, 3, 1, 2), dtype=torch.float64, requires_grad=True)
    tk = torch.tensor(np.asarray(kernel).transpose(3, 2, 0, 1), dtype=torch.float64,
                      requires_grad=True)  # fmt: skip
    tout = torch.nn.functional.conv2d(tx, tk, stride=stride, padding=padding, dilation=rate)
    tw = torch.tensor(np.asarray(weights).transpose(0, 3, 1, 2), dtype=torch.float64)
    (tout * tw).sum().backward()
    np.testing.assert_allclose(np.asarray(out), tout.detach().numpy().transpose(0, 2, 3, 1),
                               atol=1e-4, rtol=1e-4)  # fmt: skip
    np.testing.assert_allclose(np.asarray(gx), tx.grad.numpy().transpose(0, 2, 3, 1),
                               atol=1e-4, rtol=1e-4)  # fmt: skip
    np.testing.assert_allclose(np.asarray(gk), tk.grad.numpy().transpose(2, 3, 1, 0),
                               atol=1e-3, rtol=1e-4)  # fmt: skip


def test_dtype_promotes_and_bad_inputs_are_named():
    x, kernel = _arrays((1, 8, 8, 2), (3, 3, 2, 1))
    assert atrous_conv(x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16), 2).dtype == jnp.bfloat16
    assert atrous_conv(x.astype(jnp.bfloat16), kernel, 2).dtype == jnp.float32
    with pytest.raises(ValueError, match=r"matching Cin.*\(3, 3, 3, 1\)"):
        atrous_conv(x, jnp.zeros((3, 3, 3, 1)), 2)
    with pytest.raises(ValueError, match="rate must be a positive int, got 0"):
        atrous_conv(x, kernel, 0)
    with pytest.raises(ValueError, match="padding must be"):
        atrous_conv(x, kernel, 2, "full")
