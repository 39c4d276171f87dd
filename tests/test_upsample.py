"""cnnjax.ops.upsample against loop-over-output-pixel numpy references, PyTorch and flax."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax.ops import upsample


def _x(shape, seed=0, dtype=jnp.float32):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32).astype(dtype)


# --- independent references: one output pixel at a time -----------------------------------


def ref_nearest(x, fh, fw):
    b, h, w, c = x.shape
    out = np.zeros((b, h * fh, w * fw, c), x.dtype)
    for i in range(h * fh):
        for j in range(w * fw):
            out[:, i, j] = x[:, i // fh, j // fw]
    return out


def _source(o, n_in, n_out, align_corners):
    """The course's formulas for the continuous source coordinate of output index o."""
    if align_corners:
        return o * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    return max((o + 0.5) * n_in / n_out - 0.5, 0.0)


def ref_bilinear(x, out_h, out_w, align_corners):
    x = np.asarray(x, np.float64)
    b, h, w, c = x.shape
    out = np.zeros((b, out_h, out_w, c))
    for i in range(out_h):
        sy = _source(i, h, out_h, align_corners)
        y0 = min(int(np.floor(sy)), h - 1)
        y1, dy = min(y0 + 1, h - 1), sy - y0
        for j in range(out_w):
            sx = _source(j, w, out_w, align_corners)
            x0 = min(int(np.floor(sx)), w - 1)
            x1, dx = min(x0 + 1, w - 1), sx - x0
            out[:, i, j] = (
                (1 - dy) * (1 - dx) * x[:, y0, x0]
                + (1 - dy) * dx * x[:, y0, x1]
                + dy * (1 - dx) * x[:, y1, x0]
                + dy * dx * x[:, y1, x1]
            )
    return out


def ref_transposed_conv(x, kernel, stride, pad):
    """Scatter form: every input pixel adds x[i, j] @ kernel[a, c] at (i*s - p + a, j*s - p + c)."""
    x, kernel = np.asarray(x, np.float64), np.asarray(kernel, np.float64)
    b, h, w, _ = x.shape
    kh, kw, _, cout = kernel.shape
    full = np.zeros((b, (h - 1) * stride + kh, (w - 1) * stride + kw, cout))
    for i in range(h):
        for j in range(w):
            for a in range(kh):
                for c in range(kw):
                    full[:, i * stride + a, j * stride + c] += x[:, i, j] @ kernel[a, c]
    return full[:, pad : full.shape[1] - pad, pad : full.shape[2] - pad]


def ref_upsampling_weight(in_channels, out_channels, kernel_size):
    """FCN's get_upsampling_weight (shelhamer/fcn.berkeleyvision.org surgery.py), OIHW."""
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    og = np.ogrid[:kernel_size, :kernel_size]
    filt = (1 - abs(og[0] - center) / factor) * (1 - abs(og[1] - center) / factor)
    weight = np.zeros((in_channels, out_channels, kernel_size, kernel_size), np.float64)
    weight[range(in_channels), range(out_channels), :, :] = filt
    return weight


# --- nearest --------------------------------------------------------------------------------


@pytest.mark.parametrize("factor,fh,fw", [(2, 2, 2), (3, 3, 3), ((2, 3), 2, 3), ((1, 4), 1, 4)])
def test_nearest_matches_reference(factor, fh, fw):
    x = _x((2, 3, 5, 4))
    y = upsample.nearest(x, factor)
    assert y.shape == (2, 3 * fh, 5 * fw, 4) and y.dtype == x.dtype
    np.testing.assert_array_equal(np.asarray(y), ref_nearest(np.asarray(x), fh, fw))


def test_nearest_matches_torch():
    torch = pytest.importorskip("torch", reason="torch is the reference for interpolate")
    x = _x((2, 4, 3, 5))
    got = upsample.nearest(x, 3)
    want = torch.nn.functional.interpolate(
        torch.tensor(np.asarray(x)).permute(0, 3, 1, 2), scale_factor=3, mode="nearest"
    )
    np.testing.assert_array_equal(np.asarray(got), want.permute(0, 2, 3, 1).numpy())


def test_nearest_gradient_sums_each_block():
    x = _x((1, 3, 4, 2))
    cot = np.asarray(_x((1, 6, 8, 2), seed=1))
    g = jax.grad(lambda v: jnp.sum(upsample.nearest(v, 2) * cot))(x)
    want = cot.reshape(1, 3, 2, 4, 2, 2).sum(axis=(2, 4))
    np.testing.assert_allclose(np.asarray(g), want, rtol=1e-6, atol=1e-6)


def test_nearest_keeps_dtype():
    for dtype in (jnp.bfloat16, jnp.int32, jnp.float16):
        assert upsample.nearest(jnp.ones((1, 2, 2, 1), dtype), 2).dtype == dtype


# --- bilinear -------------------------------------------------------------------------------

SIZES = [
    ((4, 5), (8, 10)),  # x2
    ((4, 5), (12, 15)),  # x3
    ((3, 4), (7, 9)),  # non-integer factors 7/3, 9/4
    ((5, 6), (5, 6)),  # identity
    ((8, 9), (3, 5)),  # downsampling
    ((1, 4), (3, 1)),  # a single row in, a single column out
]


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("in_hw,out_hw", SIZES)
def test_bilinear_matches_reference(in_hw, out_hw, align_corners):
    x = _x((2, *in_hw, 3))
    y = upsample.bilinear(x, size=out_hw, align_corners=align_corners)
    assert y.shape == (2, *out_hw, 3) and y.dtype == jnp.float32
    want = ref_bilinear(np.asarray(x), *out_hw, align_corners)
    np.testing.assert_allclose(np.asarray(y), want, rtol=1e-5, atol=1e-5)


def _torch_interpolate(torch, x, **kwargs):
    t = torch.tensor(np.asarray(x, np.float32)).permute(0, 3, 1, 2)
    return torch.nn.functional.interpolate(t, mode="bilinear", **kwargs).permute(0, 2, 3, 1)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("in_hw,out_hw", SIZES)
def test_bilinear_matches_torch_size(in_hw, out_hw, align_corners):
    torch = pytest.importorskip("torch", reason="torch is the reference for interpolate")
    x = _x((2, *in_hw, 3), seed=2)
    got = upsample.bilinear(x, size=out_hw, align_corners=align_corners)
    want = _torch_interpolate(torch, x, size=out_hw, align_corners=align_corners)
    np.testing.assert_allclose(np.asarray(got), want.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("factor", [2, 3, 1.5, 2.5, (2, 1.75), 0.5])
def test_bilinear_matches_torch_factor(factor, align_corners):
    torch = pytest.importorskip("torch", reason="torch is the reference for interpolate")
    x = _x((1, 6, 8, 2), seed=3)
    got = upsample.bilinear(x, factor=factor, align_corners=align_corners)
    sf = factor if isinstance(factor, tuple) else (factor, factor)
    assert got.shape[1:3] == (int(6 * sf[0]), int(8 * sf[1]))
    want = _torch_interpolate(
        torch, x, scale_factor=sf, align_corners=align_corners, recompute_scale_factor=True
    )
    np.testing.assert_allclose(np.asarray(got), want.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("in_hw,out_hw", [((4, 5), (8, 10)), ((3, 4), (7, 9)), ((2, 2), (9, 5))])
def test_bilinear_upsampling_matches_jax_image_resize(in_hw, out_hw):
    x = _x((2, *in_hw, 3), seed=4)
    want = jax.image.resize(x, (2, *out_hw, 3), "bilinear")
    got = upsample.bilinear(x, size=out_hw)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_bilinear_downsampling_does_not_antialias():
    """x2 down with half-pixel centres samples exactly between pixel pairs: the mean of the
    2x2 block, where jax.image.resize's antialiased triangle reaches wider."""
    x = _x((1, 8, 8, 1), seed=5)
    got = np.asarray(upsample.bilinear(x, size=(4, 4)))
    np.testing.assert_allclose(got, np.asarray(x).reshape(1, 4, 2, 4, 2, 1).mean((2, 4)), atol=1e-6)
    assert not np.allclose(got, np.asarray(jax.image.resize(x, (1, 4, 4, 1), "bilinear")))


def test_bilinear_align_corners_keeps_corners():
    x = _x((1, 3, 4, 2), seed=6)
    y = np.asarray(upsample.bilinear(x, size=(7, 10), align_corners=True))
    for i, j in [(0, 0), (0, -1), (-1, 0), (-1, -1)]:
        np.testing.assert_allclose(y[0, i, j], np.asarray(x)[0, i, j], rtol=1e-6)


@pytest.mark.parametrize("align_corners", [False, True])
def test_bilinear_gradient_matches_torch(align_corners):
    torch = pytest.importorskip("torch", reason="torch autograd is the gradient reference")
    x = _x((2, 3, 5, 2), seed=7)
    cot = np.asarray(_x((2, 7, 8, 2), seed=8))
    g = jax.grad(
        lambda v: jnp.sum(upsample.bilinear(v, size=(7, 8), align_corners=align_corners) * cot)
    )(x)
    t = torch.tensor(np.asarray(x), requires_grad=True)
    out = torch.nn.functional.interpolate(
        t.permute(0, 3, 1, 2), size=(7, 8), mode="bilinear", align_corners=align_corners
    )
    (out.permute(0, 2, 3, 1) * torch.tensor(cot)).sum().backward()
    np.testing.assert_allclose(np.asarray(g), t.grad.numpy(), rtol=1e-5, atol=1e-5)


def test_bilinear_gradient_matches_finite_differences():
    x = np.asarray(_x((1, 3, 3, 1), seed=9), np.float64)
    cot = np.asarray(_x((1, 5, 4, 1), seed=10), np.float64)

    def f(v):
        return float(np.sum(ref_bilinear(v, 5, 4, False) * cot))

    g = np.asarray(
        jax.grad(lambda v: jnp.sum(upsample.bilinear(v, size=(5, 4)) * cot))(jnp.asarray(x))
    )
    eps = 1e-4
    for idx in np.ndindex(x.shape):
        d = np.zeros_like(x)
        d[idx] = eps
        np.testing.assert_allclose(g[idx], (f(x + d) - f(x - d)) / (2 * eps), rtol=1e-4, atol=1e-5)


def test_bilinear_keeps_bfloat16_and_leading_dims():
    x = _x((2, 3, 4, 5, 2), dtype=jnp.bfloat16)
    y = upsample.bilinear(x, factor=2)
    assert y.dtype == jnp.bfloat16 and y.shape == (2, 3, 8, 10, 2)
    want = ref_bilinear(np.asarray(x, np.float32).reshape(6, 4, 5, 2), 8, 10, False)
    np.testing.assert_allclose(np.asarray(y, np.float32).reshape(6, 8, 10, 2), want, atol=3e-2)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({}, "exactly one of size and factor"),
        ({"size": 4, "factor": 2}, "exactly one of size and factor"),
        ({"size": (4, 0)}, "bilinear size must be a positive int"),
        ({"size": 2.5}, "bilinear size must be a positive int"),
        ({"factor": -1}, "bilinear factor must be a positive number"),
        ({"factor": 0.1}, "bilinear factor 0.1 maps"),
        ({"factor": (1, 2, 3)}, "bilinear factor must be"),
    ],
)
def test_bilinear_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        upsample.bilinear(jnp.ones((1, 4, 4, 1)), **kwargs)


def test_ops_reject_bad_maps():
    with pytest.raises(ValueError, match=r"bilinear: x must have shape \[..., H, W, C\]"):
        upsample.bilinear(jnp.ones((4, 4)), factor=2)
    with pytest.raises(ValueError, match="bilinear: x must be a floating array"):
        upsample.bilinear(jnp.ones((1, 4, 4, 1), jnp.int32), factor=2)
    with pytest.raises(ValueError, match="nearest factor must be a positive int"):
        upsample.nearest(jnp.ones((1, 4, 4, 1)), 1.5)
    with pytest.raises(ValueError, match=r"nearest: x must have shape"):
        upsample.nearest(jnp.ones((4, 4)), 2)


# --- bilinear kernel, transposed convolution ------------------------------------------------


@pytest.mark.parametrize("factor", [1, 2, 3, 4, 5, 8])
def test_bilinear_kernel_matches_fcn(factor):
    k = upsample.bilinear_kernel_size(factor)
    assert k == {1: 1, 2: 4, 3: 5, 4: 8, 5: 9, 8: 16}[factor]
    got = upsample.bilinear_kernel(factor, 3)
    assert got.shape == (k, k, 3, 3) and got.dtype == jnp.float32
    want = ref_upsampling_weight(3, 3, k).transpose(2, 3, 0, 1)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-7)


def test_bilinear_kernel_rejects_bad_arguments():
    with pytest.raises(ValueError, match="factor must be a positive int"):
        upsample.bilinear_kernel(0, 3)
    with pytest.raises(ValueError, match="channels must be a positive int"):
        upsample.bilinear_kernel(2, 0)


@pytest.mark.parametrize("stride,pad,k", [(2, 1, 4), (3, 1, 5), (2, 0, 3), (1, 1, 3), (2, 2, 5)])
def test_transposed_conv_matches_reference_and_torch(stride, pad, k):
    """A random (asymmetric) kernel, so a flipped or channel-swapped kernel would fail."""
    x = _x((2, 4, 5, 3), seed=11)
    kernel = _x((k, k, 3, 2), seed=12)
    got = upsample.transposed_conv(x, kernel, stride, pad)
    want = ref_transposed_conv(np.asarray(x), np.asarray(kernel), stride, pad)
    assert got.shape == ((2, (4 - 1) * stride - 2 * pad + k, (5 - 1) * stride - 2 * pad + k, 2))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
    torch = pytest.importorskip("torch", reason="torch is the reference for conv_transpose2d")
    t = torch.nn.functional.conv_transpose2d(
        torch.tensor(np.asarray(x)).permute(0, 3, 1, 2),
        torch.tensor(np.asarray(kernel)).permute(2, 3, 0, 1),
        stride=stride,
        padding=pad,
    )
    np.testing.assert_allclose(np.asarray(got), t.permute(0, 2, 3, 1).numpy(), atol=1e-5)


def test_transposed_conv_gradient_matches_torch():
    torch = pytest.importorskip("torch", reason="torch autograd is the gradient reference")
    x, kernel = _x((1, 3, 3, 2), seed=13), _x((4, 4, 2, 3), seed=14)
    cot = np.asarray(_x((1, 6, 6, 3), seed=15))
    gx, gk = jax.grad(
        lambda a, b: jnp.sum(upsample.transposed_conv(a, b, 2, 1) * cot), argnums=(0, 1)
    )(x, kernel)
    tx = torch.tensor(np.asarray(x), requires_grad=True)
    tk = torch.tensor(np.asarray(kernel), requires_grad=True)
    out = torch.nn.functional.conv_transpose2d(
        tx.permute(0, 3, 1, 2), tk.permute(2, 3, 0, 1), stride=2, padding=1
    )
    (out.permute(0, 2, 3, 1) * torch.tensor(cot)).sum().backward()
    np.testing.assert_allclose(np.asarray(gx), tx.grad.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(gk), tk.grad.numpy(), rtol=1e-5, atol=1e-5)


def test_transposed_conv_rejects_bad_arguments():
    x = jnp.ones((1, 2, 2, 3))
    with pytest.raises(ValueError, match="kernel has 2 input channels"):
        upsample.transposed_conv(x, jnp.ones((3, 3, 2, 1)), 2)
    with pytest.raises(ValueError, match=r"needs x \[B, H, W, Cin\]"):
        upsample.transposed_conv(x[0], jnp.ones((3, 3, 3, 1)), 2)
    with pytest.raises(ValueError, match="padding must be a non-negative int"):
        upsample.transposed_conv(x, jnp.ones((3, 3, 3, 1)), 2, -1)
    with pytest.raises(ValueError, match="stride must be a positive int"):
        upsample.transposed_conv(x, jnp.ones((3, 3, 3, 1)), 0)
    with pytest.raises(ValueError, match="leaves an empty output"):
        upsample.transposed_conv(jnp.ones((1, 1, 1, 3)), jnp.ones((1, 1, 3, 1)), 1, 1)


def _bilinear_conv_transpose(factor, channels, padding=None):
    k = upsample.bilinear_kernel_size(factor)
    return nn.ConvTranspose(
        channels,
        (k, k),
        strides=(factor, factor),
        padding=upsample.bilinear_padding(factor) if padding is None else padding,
        kernel_init=upsample.bilinear_init(factor),
    )


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_bilinear_conv_transpose_is_bilinear_inside_the_border(factor):
    x = _x((2, 5, 6, 3), seed=16)
    layer = _bilinear_conv_transpose(factor, 3)
    y, variables = layer.init_with_output(jax.random.key(0), x)
    assert y.shape == (2, 5 * factor, 6 * factor, 3)
    np.testing.assert_array_equal(
        np.asarray(variables["params"]["kernel"]), np.asarray(upsample.bilinear_kernel(factor, 3))
    )
    b, y = np.asarray(upsample.bilinear(x, factor=factor)), np.asarray(y)
    m = factor // 2  # border rows / columns that read the zero padding
    inner = (slice(None), slice(m, y.shape[1] - m), slice(m, y.shape[2] - m))
    np.testing.assert_allclose(y[inner], b[inner], rtol=1e-5, atol=1e-5)
    # The border is the bilinear value times (1 - d), d = distance of src past the edge pixel.
    d = 0.5 - (np.arange(m) + 0.5) / factor
    np.testing.assert_allclose(y[:, 0, m:-m], (1 - d[0]) * b[:, 0, m:-m], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y[:, m:-m, -1], (1 - d[0]) * b[:, m:-m, -1], rtol=1e-5, atol=1e-5)
    assert not np.allclose(y[:, 0], b[:, 0])
    # flax's 'SAME' computes the same padding for this kernel.
    same = _bilinear_conv_transpose(factor, 3, padding="SAME").apply(variables, x)
    np.testing.assert_array_equal(np.asarray(same), y)


@pytest.mark.parametrize("factor", [2, 3])
def test_bilinear_conv_transpose_matches_torch(factor):
    torch = pytest.importorskip("torch", reason="torch is the reference for ConvTranspose2d")
    x = _x((2, 4, 5, 3), seed=17)
    layer = _bilinear_conv_transpose(factor, 3)
    y, _ = layer.init_with_output(jax.random.key(0), x)
    k = upsample.bilinear_kernel_size(factor)
    tlayer = torch.nn.ConvTranspose2d(3, 3, k, stride=factor, padding=factor // 2, bias=False)
    with torch.no_grad():
        tlayer.weight.copy_(torch.tensor(ref_upsampling_weight(3, 3, k)))
        want = tlayer(torch.tensor(np.asarray(x)).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    np.testing.assert_allclose(np.asarray(y), want.numpy(), rtol=1e-5, atol=1e-5)


def test_flax_conv_transpose_equals_transposed_conv_with_flipped_kernel():
    x, kernel = _x((1, 3, 4, 2), seed=18), _x((3, 3, 2, 2), seed=19)
    layer = nn.ConvTranspose(2, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), use_bias=False)
    got = layer.apply({"params": {"kernel": kernel}}, x)
    want = upsample.transposed_conv(x, kernel[::-1, ::-1], 2, 3 - 1 - 1)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_bilinear_init_rejects_wrong_kernel_shape():
    layer = nn.ConvTranspose(4, (4, 4), strides=(2, 2), kernel_init=upsample.bilinear_init(2))
    with pytest.raises(ValueError, match=r"bilinear_init\(2\) needs a ConvTranspose kernel"):
        layer.init(jax.random.key(0), jnp.ones((1, 3, 3, 2)))
    layer = nn.ConvTranspose(2, (3, 3), strides=(2, 2), kernel_init=upsample.bilinear_init(2))
    with pytest.raises(ValueError, match=r"shape \[4, 4, C, C\]"):
        layer.init(jax.random.key(0), jnp.ones((1, 3, 3, 2)))


def test_bilinear_conv_transpose_keeps_bfloat16():
    x = _x((1, 4, 4, 2), dtype=jnp.bfloat16)
    k = upsample.bilinear_kernel_size(2)
    layer = nn.ConvTranspose(
        2,
        (k, k),
        strides=(2, 2),
        padding=upsample.bilinear_padding(2),
        kernel_init=upsample.bilinear_init(2),
        dtype=jnp.bfloat16,
    )
    y, _ = layer.init_with_output(jax.random.key(0), x)
    assert y.dtype == jnp.bfloat16 and y.shape == (1, 8, 8, 2)
    kernel = upsample.bilinear_kernel(2, 2).astype(jnp.bfloat16)
    assert upsample.transposed_conv(x, kernel, 2, 1).dtype == jnp.bfloat16
