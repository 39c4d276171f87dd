"""cnnjax's BatchNorm (hand-written backward) against flax's: same variables, bitwise the
same forward and running statistics, gradients equal to rounding, fewer residuals."""

import contextlib
import io

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.ad_checkpoint import print_saved_residuals

from cnnjax import models
from cnnjax.config.validate import check_values
from cnnjax.engine.state import create_state
from cnnjax.errors import ConfigError
from cnnjax.models import rewrite
from cnnjax.models.batch_norm import BatchNorm
from tests.conftest import classification_step, image_inputs, load_config

X = jax.random.normal(jax.random.key(0), (4, 6, 6, 8)) * 3 + 1
W = jax.random.normal(jax.random.key(2), X.shape)
PARAMS = {"scale": jnp.linspace(0.5, 2.0, 8), "bias": jnp.linspace(-1.0, 1.0, 8)}


def _pair(dtype):
    kw = {"use_running_average": False, "momentum": 0.9, "epsilon": 1e-5, "dtype": dtype}
    return nn.BatchNorm(**kw), BatchNorm(**kw)


def _apply(module, x, stats, train=True):
    module = module.clone(use_running_average=not train)
    return module.apply({"params": PARAMS, "batch_stats": stats}, x, mutable=["batch_stats"])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_same_variables_forward_and_running_statistics(dtype):
    flax_bn, ours = _pair(dtype)
    x = X.astype(dtype)
    va, vb = flax_bn.init(jax.random.key(1), x), ours.init(jax.random.key(1), x)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), va) == jax.tree.map(
        lambda a: (a.shape, a.dtype), vb
    )
    # init leaves the running statistics at (0, 1) in both
    assert (vb["batch_stats"]["mean"] == 0).all() and (vb["batch_stats"]["var"] == 1).all()
    stats = {"mean": jnp.linspace(-1, 1, 8), "var": jnp.linspace(0.5, 3, 8)}
    for train in (True, False):
        (ya, ua), (yb, ub) = _apply(flax_bn, x, stats, train), _apply(ours, x, stats, train)
        assert ya.dtype == yb.dtype == dtype
        assert np.asarray(ya).tobytes() == np.asarray(yb).tobytes()
        for a, b in zip(jax.tree.leaves(ua), jax.tree.leaves(ub), strict=True):
            assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


def _grads(module, x, stats):
    def f(params, x):
        y, _ = module.apply({"params": params, "batch_stats": stats}, x, mutable=["batch_stats"])
        y = y.astype(jnp.float32)
        return (y * W).sum() + (y**2).sum()

    return jax.grad(f, argnums=(0, 1))(PARAMS, x)


def test_float32_gradients_equal_flax_to_rounding():
    flax_bn, ours = _pair(jnp.float32)
    stats = flax_bn.init(jax.random.key(1), X)["batch_stats"]
    ga, gb = _grads(flax_bn, X, stats), _grads(ours, X, stats)
    for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gb), strict=True):
        np.testing.assert_allclose(b, a, rtol=0, atol=2e-6 * float(jnp.abs(a).max()))


def test_bfloat16_input_gradient_is_as_close_to_float64_as_flax():
    x = X.astype(jnp.bfloat16)
    flax_bn, ours = _pair(jnp.bfloat16)
    stats = flax_bn.init(jax.random.key(1), x)["batch_stats"]
    xd = np.asarray(x, np.float64)
    n = xd.size // xd.shape[-1]
    mean, var = xd.mean((0, 1, 2)), xd.var((0, 1, 2))
    x_hat = (xd - mean) / np.sqrt(var + 1e-5)
    y = x_hat * np.asarray(PARAMS["scale"], np.float64) + np.asarray(PARAMS["bias"], np.float64)
    dy = np.asarray(W, np.float64) + 2 * y  # d/dy of sum(y * W) + sum(y^2)
    dyd = dy * np.asarray(PARAMS["scale"], np.float64)
    exact = (dyd - dyd.mean((0, 1, 2)) - x_hat * (dyd * x_hat).sum((0, 1, 2)) / n) / np.sqrt(
        var + 1e-5
    )
    errors = []
    for module in (flax_bn, ours):
        gx = np.asarray(_grads(module, x, stats)[1], np.float64)
        errors.append(np.abs(gx - exact).max() / np.abs(exact).max())
    assert errors[1] <= max(errors[0], 0.01) * 1.5, errors  # rounding of a bf16 output


def test_backward_keeps_the_input_not_float32_copies():
    x = jax.random.normal(jax.random.key(0), (8, 16, 16, 32), jnp.bfloat16)

    def big_f32(module):
        v = module.init(jax.random.key(1), x)

        def f(x):
            y, _ = module.apply(v, x, mutable=["batch_stats"])
            return y.astype(jnp.float32).sum()

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            print_saved_residuals(f, x)
        return [line for line in out.getvalue().splitlines() if "f32[8,16,16,32]" in line]

    flax_bn, ours = _pair(jnp.bfloat16)
    assert len(big_f32(flax_bn)) >= 2  # x - mean and x, in float32
    assert big_f32(ours) == []


def test_a_train_step_with_either_batch_norm_agrees():
    cfg = load_config("configs/resnet20_cifar.py", "digits,smoke").train
    batch = {
        "image": jax.random.normal(jax.random.key(3), (8, 16, 16, 3)),
        "label": jnp.arange(8) % 10,
        "mask": jnp.ones((8,)),
    }
    results = []
    for name in ("flax", "cnnjax"):
        with cfg.unlocked():
            cfg.batch_norm = name
        model = rewrite.apply_to_model(models.create("resnet20_cifar", num_classes=10), cfg)
        assert model.norm is rewrite.BATCH_NORMS[name]
        state = create_state(model, optax.sgd(0.1), jax.random.key(0), image_inputs((16, 16, 3)))
        results.append(jax.jit(classification_step(10))(state, batch))
    (sa, ma), (sb, mb) = results
    assert float(ma["loss"]) == float(mb["loss"])  # identical forward
    for a, b in zip(jax.tree.leaves(sa.params), jax.tree.leaves(sb.params), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(sa.batch_stats), jax.tree.leaves(sb.batch_stats), strict=True):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


def test_unknown_batch_norm_is_a_config_error():
    cfg = load_config("configs/resnet20_cifar.py", "digits,smoke")
    cfg.train.batch_norm = "fused"
    with pytest.raises(ConfigError, match="train.batch_norm must be one of .*, got 'fused'"):
        check_values(cfg)
