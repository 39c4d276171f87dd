"""cnnjax.models.autoencoder: shapes, exact parameter counts, bilinear init, training signal."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnnjax import models
from cnnjax.errors import ConfigError
from cnnjax.models.autoencoder import Autoencoder
from cnnjax.ops import upsample


def _images(shape, seed=0):
    return jax.random.uniform(jax.random.key(seed), shape)


def _n_params(model, x) -> int:
    """Parameter count from abstract init (shapes only, nothing is computed)."""
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    return sum(a.size for a in jax.tree_util.tree_leaves(variables["params"]))


def expected_params(hw, in_c, widths, latent_dim, upsample_mode, convs_per_level=1, out_c=None):
    """Counted layer by layer: conv kernels (no bias before BN), BN scale + bias, dense layers."""
    out_c = in_c if out_c is None else out_c
    conv = lambda cin, cout: 9 * cin * cout + 2 * cout  # 3x3 kernel + BN scale and bias
    total, c = 0, in_c
    for w in widths:
        total += conv(c, w) + (convs_per_level - 1) * conv(w, w)
        c = w
    cells = (hw // 2 ** len(widths)) ** 2 * c
    if latent_dim:
        total += (cells * latent_dim + latent_dim) + (latent_dim * cells + cells)
    dec_widths = [*widths[-2::-1], widths[0]]
    for w in dec_widths:
        if upsample_mode == "transposed":
            total += 4 * 4 * c * c  # channel-preserving ConvTranspose, no bias
        total += conv(c, w)
        c = w
    return total + 9 * c * out_c + out_c  # the head conv has a bias


def test_default_parameter_count_at_16px():
    model = models.create("autoencoder", out_channels=1)
    n = _n_params(model, jnp.zeros((1, 16, 16, 1)))
    assert n == expected_params(16, 1, (32, 64), 32, "transposed")
    # 352 + 18,560 encoder; 32,800 + 33,792 dense; 65,536 + 18,496 + 16,384 + 9,280 decoder;
    # 289 head
    assert n == 195_489


@pytest.mark.parametrize(
    "kwargs,hw,c",
    [
        ({"upsample": "nearest"}, 16, 1),
        ({"upsample": "bilinear", "latent_dim": 0}, 32, 3),
        ({"upsample": "transposed", "widths": (8, 16, 24), "convs_per_level": 2}, 32, 3),
        ({"upsample": "bilinear", "widths": (16,), "latent_dim": 10}, 16, 1),
    ],
)
def test_parameter_count_formula(kwargs, hw, c):
    model = Autoencoder(out_channels=c, **kwargs)
    full = {"widths": (32, 64), "latent_dim": 32, "convs_per_level": 1, **kwargs}
    want = expected_params(
        hw, c, full["widths"], full["latent_dim"], full["upsample"], full["convs_per_level"]
    )
    assert _n_params(model, jnp.zeros((1, hw, hw, c))) == want


@pytest.mark.parametrize("mode", ["nearest", "bilinear", "transposed"])
@pytest.mark.parametrize("hw,c", [(16, 1), (32, 3)])
def test_output_shapes_and_features(mode, hw, c):
    model = models.create("autoencoder", out_channels=c, upsample=mode)
    x = _images((2, hw, hw, c))
    variables = model.init(jax.random.key(0), x)
    y, feats = model.apply(variables, x)
    assert y.shape == (2, hw, hw, c) and y.dtype == jnp.float32
    assert feats["latent"].shape == (2, 32)
    assert feats["encoder1"].shape == feats["stride2"].shape == (2, hw // 2, hw // 2, 32)
    assert feats["encoder2"].shape == feats["stride4"].shape == (2, hw // 4, hw // 4, 64)
    assert feats["decoder1"].shape == (2, hw // 2, hw // 2, 32)
    assert feats["decoder2"].shape == (2, hw, hw, 32)
    assert set(feats) == {"encoder1", "encoder2", "stride2", "stride4", "latent"} | {
        "decoder1",
        "decoder2",
    }


def test_fully_convolutional_bottleneck():
    model = Autoencoder(out_channels=3, latent_dim=0, widths=(8, 16, 32))
    x = _images((2, 32, 24, 3))  # non-square works: only divisibility by 8 is needed
    variables = model.init(jax.random.key(0), x)
    assert "latent" not in variables["params"] and "expand" not in variables["params"]
    y, feats = model.apply(variables, x)
    assert y.shape == (2, 32, 24, 3)
    assert feats["latent"].shape == (2, 4, 3, 32) and feats["stride8"] is feats["latent"]


def test_transposed_decoder_starts_as_bilinear_upsampling():
    model = Autoencoder(out_channels=1, widths=(8, 16), upsample="transposed")
    x = _images((2, 16, 16, 1))
    variables = model.init(jax.random.key(0), x)
    params = variables["params"]
    for j, c in [(1, 16), (2, 8)]:
        np.testing.assert_array_equal(
            np.asarray(params[f"decoder{j}_up"]["kernel"]),
            np.asarray(upsample.bilinear_kernel(2, c)),
        )
    # Run the first decoder upsampling on the bottleneck map it receives.
    _, state = model.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
    inter = state["intermediates"]
    up_in = inter["expand"]["__call__"][0]  # Dense output; the decoder sees act(...).reshape
    up_in = nn.relu(up_in).reshape(2, 4, 4, 16)
    up_out = np.asarray(inter["decoder1_up"]["__call__"][0])
    want = np.asarray(upsample.bilinear(up_in, factor=2))
    assert up_out.shape == (2, 8, 8, 16)
    np.testing.assert_allclose(up_out[:, 1:-1, 1:-1], want[:, 1:-1, 1:-1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(up_out[:, 0, 1:-1], 0.75 * want[:, 0, 1:-1], rtol=1e-5, atol=1e-5)


def _loss(model, params, batch_stats, x):
    (y, _), state = model.apply(
        {"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
    )
    return jnp.mean((jax.nn.sigmoid(y) - x) ** 2), state["batch_stats"]


@pytest.mark.parametrize("mode,latent_dim", [("transposed", 32), ("nearest", 0)])
def test_gradients_reach_every_parameter(mode, latent_dim):
    model = Autoencoder(out_channels=1, widths=(8, 16), upsample=mode, latent_dim=latent_dim)
    x = _images((4, 16, 16, 1))
    variables = model.init(jax.random.key(0), x)
    grads, _ = jax.grad(lambda p: _loss(model, p, variables["batch_stats"], x), has_aux=True)(
        variables["params"]
    )
    flat = jax.tree_util.tree_flatten_with_path(grads)[0]
    dead = [jax.tree_util.keystr(k) for k, g in flat if not np.any(np.asarray(g) != 0)]
    assert not dead, f"no gradient reaches {dead}"
    assert len(flat) == len(jax.tree_util.tree_leaves(variables["params"]))


def test_overfits_eight_images():
    model = Autoencoder(out_channels=1, widths=(8, 16), latent_dim=16)
    # Smooth blobs, so that 8 images fit through a 16-number code in a few dozen steps.
    yy, xx = np.mgrid[:16, :16]
    centres = np.random.default_rng(0).uniform(3, 13, size=(8, 2))
    x = np.exp(-((yy - centres[:, :1, None]) ** 2 + (xx - centres[:, 1:, None]) ** 2) / 8)
    x = jnp.asarray(x[..., None], jnp.float32)
    variables = model.init(jax.random.key(0), x)
    params, stats = variables["params"], variables["batch_stats"]
    tx = optax.adam(1e-2)
    opt = tx.init(params)

    @jax.jit
    def step(params, stats, opt):
        (loss, stats), g = jax.value_and_grad(lambda p: _loss(model, p, stats, x), has_aux=True)(
            params
        )
        updates, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, updates), stats, opt, loss

    first = None
    for _ in range(60):
        params, stats, opt, loss = step(params, stats, opt)
        first = float(loss) if first is None else first
    final = float(_loss(model, params, stats, x)[0])
    assert final < first / 20, (first, final)
    # Far below the best image-independent output (the mean image), so z carries each image.
    assert final < float(jnp.mean((x - x.mean(0)) ** 2)) / 10, final


@pytest.mark.parametrize("hw", [(15, 16), (16, 18)])
def test_rejects_sizes_not_divisible(hw):
    model = models.create("autoencoder", out_channels=1)
    with pytest.raises(ConfigError, match=rf"divisible by 4 .*got {hw[0]}x{hw[1]}"):
        model.init(jax.random.key(0), jnp.zeros((1, *hw, 1)))
    with pytest.raises(ConfigError, match="divisible by 8"):
        Autoencoder(out_channels=1, widths=(4, 4, 4)).init(
            jax.random.key(0), jnp.zeros((1, 12, 12, 1))
        )


def test_rejects_unknown_upsample_and_bad_fields():
    model = models.create("autoencoder", out_channels=1, upsample="bilinaer")
    with pytest.raises(ConfigError, match="Did you mean 'bilinear'.*bilinear, nearest, transposed"):
        model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 1)))
    with pytest.raises(ConfigError, match="latent_dim >= 0"):
        Autoencoder(out_channels=1, latent_dim=-1).init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
    with pytest.raises(ConfigError, match="widths must be positive"):
        Autoencoder(out_channels=1, widths=()).init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
    with pytest.raises(ConfigError, match="has no option"):
        models.create("autoencoder", out_channels=1, num_classes=10)


@pytest.mark.parametrize("mode", ["nearest", "bilinear", "transposed"])
def test_bfloat16_compute_keeps_float32_outputs(mode):
    x = _images((2, 16, 16, 3))
    f32 = Autoencoder(out_channels=3, upsample=mode)
    bf16 = Autoencoder(out_channels=3, upsample=mode, dtype=jnp.bfloat16)
    variables = f32.init(jax.random.key(0), x)
    y, feats = bf16.apply(variables, x)
    assert y.dtype == jnp.float32 and feats["decoder2"].dtype == jnp.bfloat16
    y32, _ = f32.apply(variables, x)
    np.testing.assert_allclose(np.asarray(y), np.asarray(y32), atol=0.02)
    assert jax.tree_util.tree_all(
        jax.tree_util.tree_map(lambda a: a.dtype == jnp.float32, variables["params"])
    )


def test_trainer_speed_rewrites_apply():
    """bfloat16, the im2col conv and cnnjax's BatchNorm swap in without changing parameters."""
    from types import SimpleNamespace

    from cnnjax.models import rewrite
    from cnnjax.models.patch_conv import conv_for_backend

    base = models.create("autoencoder", out_channels=1, widths=(8, 16), latent_dim=8)
    cfg = SimpleNamespace(compute_dtype="bfloat16", conv="xla", batch_norm="cnnjax")
    model = rewrite.apply_to_model(base, cfg)
    conv = conv_for_backend("xla", materialize=rewrite.resolve_materialize("auto"))
    assert model.dtype == jnp.bfloat16 and model.conv is conv
    assert model.norm is rewrite.BATCH_NORMS["cnnjax"]
    x = _images((2, 16, 16, 1))
    variables = base.init(jax.random.key(0), x)
    shapes = jax.tree_util.tree_map(jnp.shape, variables)
    assert jax.tree_util.tree_map(jnp.shape, model.init(jax.random.key(0), x)) == shapes
    (y, _), _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
    (y32, _), _ = base.apply(variables, x, train=True, mutable=["batch_stats"])
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(y), np.asarray(y32), atol=0.05)
