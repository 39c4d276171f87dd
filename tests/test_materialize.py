"""The XLA:CPU recompute barrier (cnnjax/runtime/materialize.py): an identity in values and
gradients, which removes the BatchNorm/ReLU/residual recompute from the weight-gradient
transposes of a compiled train step, keeps shardings, maps under vmap, and says why when it
cannot be built."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax import lax

from cnnjax import models
from cnnjax.analysis.hlo import recomputed_in_conv_layouts
from cnnjax.errors import ConfigError
from cnnjax.models import patch_conv, rewrite
from cnnjax.ops import onednn
from cnnjax.runtime import materialize as M

# Tests of the barrier itself need the handler built; on a machine without a C++ compiler
# they cannot run, and say so (the no-compiler test below runs everywhere).
needs_barrier = pytest.mark.skipif(
    not M.available()[0],
    reason=f"the barrier's C++ handler cannot be built on this machine: {M.available()[1]}",
)


def _cfg(**kw):
    base = {"compute_dtype": "float32", "conv": "xla", "batch_norm": "cnnjax",
            "materialize": "on", "depthwise": "xla"}  # fmt: skip
    return ml_collections.ConfigDict({**base, **kw})


@needs_barrier
def test_identity_in_values_and_both_modes_of_differentiation():
    x = jax.random.normal(jax.random.key(0), (3, 5, 7))
    f = lambda x: jnp.sum(jnp.sin(M.materialize(jnp.tanh(x))) ** 2)
    g = lambda x: jnp.sum(jnp.sin(jnp.tanh(x)) ** 2)
    np.testing.assert_array_equal(jax.jit(M.materialize)(x), x)
    np.testing.assert_allclose(jax.jit(jax.grad(f))(x), jax.grad(g)(x), rtol=1e-6)
    t = jnp.ones_like(x)
    np.testing.assert_allclose(jax.jvp(f, (x,), (t,))[1], jax.jvp(g, (x,), (t,))[1], rtol=1e-6)
    for dtype in (jnp.bfloat16, jnp.int32, jnp.bool_):
        y = (x > 0).astype(dtype)
        np.testing.assert_array_equal(jax.jit(M.materialize)(y), y)
    # the cotangent barrier: identity forward, identity gradient
    h = lambda x: jnp.sum(M.materialize_cotangent(jnp.tanh(x)) ** 3)
    k = lambda x: jnp.sum(jnp.tanh(x) ** 3)
    np.testing.assert_allclose(jax.jit(jax.grad(h))(x), jax.grad(k)(x), rtol=1e-6)


@needs_barrier
def test_vmap_maps_it_elementwise():
    x = jax.random.normal(jax.random.key(1), (4, 2, 3))
    out = jax.jit(jax.vmap(lambda r: M.materialize(r * 2.0)))(x)
    np.testing.assert_array_equal(out, x * 2.0)
    grads = jax.vmap(jax.grad(lambda r: jnp.sum(M.materialize(r) ** 2)))(x)
    np.testing.assert_allclose(grads, 2 * x, rtol=1e-6)


@needs_barrier
def test_it_is_an_opaque_custom_call_in_the_compiled_program():
    text = jax.jit(lambda x: M.materialize(x * 2.0) + 1.0).lower(jnp.ones(8)).compile().as_text()
    assert f'custom_call_target="{M.TARGET}"' in text


@needs_barrier
def test_materialized_conv_equals_the_plain_one_in_values_and_gradients():
    x = jax.random.normal(jax.random.key(2), (2, 9, 9, 5))
    k = jax.random.normal(jax.random.key(3), (3, 3, 5, 4))
    args = dict(window_strides=(2, 1), padding=((1, 1), (0, 2)),
                dimension_numbers=("NHWC", "HWIO", "NHWC"))  # fmt: skip
    conv = M.materialized_conv(lax.conv_general_dilated)
    loss = lambda fn: lambda x, k: jnp.sum(jnp.tanh(fn(jax.nn.relu(x), k, **args)) ** 2)
    np.testing.assert_array_equal(
        jax.jit(lambda x, k: conv(x, k, **args))(x, k), lax.conv_general_dilated(x, k, **args)
    )
    ga = jax.jit(jax.grad(loss(conv), argnums=(0, 1)))(x, k)
    gb = jax.jit(jax.grad(loss(lax.conv_general_dilated), argnums=(0, 1)))(x, k)
    for a, b in zip(ga, gb, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@needs_barrier
def test_auto_leaves_mobilenet_out_and_on_forces_it():
    """Decided per family by measurement (BENCHMARKS.md): MobileNet trains slower with the
    barrier, so 'auto' leaves it out; EfficientNet and the residual nets keep it."""
    mats = set(patch_conv.MATERIALIZED_CONVS.values())
    for name in ("mobilenet_v1", "mobilenet_v2"):
        auto = rewrite.apply_to_model(models.create(name, num_classes=10), _cfg(materialize="auto"))
        assert auto.conv is patch_conv.CONVS["xla"], name
        on = rewrite.apply_to_model(models.create(name, num_classes=10), _cfg(materialize="on"))
        assert on.conv in mats, name
    for name in ("efficientnet_b0", "resnet20_cifar"):
        auto = rewrite.apply_to_model(models.create(name, num_classes=10), _cfg(materialize="auto"))
        assert auto.conv in mats, name


@needs_barrier
def test_grouped_and_depthwise_convolutions_are_left_without_the_barrier():
    conv = M.materialized_conv(lax.conv_general_dilated)
    x = jnp.ones((1, 6, 6, 4))
    dn = ("NHWC", "HWIO", "NHWC")
    calls = lambda k, **kw: (
        jax.jit(lambda x, k: conv(x, k, (1, 1), "SAME", dimension_numbers=dn, **kw))
        .lower(x, k).compile().as_text().count(f'custom_call_target="{M.TARGET}"')
    )  # fmt: skip
    assert calls(jnp.ones((3, 3, 4, 8))) == 1
    assert calls(jnp.ones((3, 3, 1, 4)), feature_group_count=4) == 0  # depthwise
    assert calls(jnp.ones((3, 3, 2, 8)), feature_group_count=2) == 0  # grouped
    positional = jax.jit(lambda x, k: conv(x, k, (1, 1), "SAME", None, None, dn, 4))
    assert positional.lower(x, jnp.ones((3, 3, 1, 4))).compile().as_text().count(M.TARGET) == 0


def _train_step_hlo_and_grads(materialize: str, conv: str = "xla"):
    """A small residual net's train step (the trainer's loss, BatchNorm in training mode):
    optimized HLO text and the gradients at a fixed batch."""
    model = rewrite.apply_to_model(
        models.create("resnet20_cifar", num_classes=10),
        _cfg(materialize=materialize, conv=conv),
    )
    x = jax.random.normal(jax.random.key(0), (8, 16, 16, 3))
    y = jnp.arange(8) % 10
    variables = model.init(jax.random.key(1), x, train=False)

    def loss(params):
        (logits, _), _ = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]}, x, train=True,
            mutable=["batch_stats"],
        )  # fmt: skip
        return jnp.mean(-jax.nn.log_softmax(logits)[jnp.arange(8), y])

    fn = jax.jit(jax.grad(loss))
    return fn.lower(variables["params"]).compile().as_text(), fn(variables["params"])


@needs_barrier
def test_the_recompute_is_gone_from_the_weight_gradient_transposes():
    off_text, off_grads = _train_step_hlo_and_grads("off")
    on_text, on_grads = _train_step_hlo_and_grads("on")
    recomputed = recomputed_in_conv_layouts(off_text)
    # The detector sees XLA's recompute without the barrier (BatchNorm's multiply / subtract
    # and ReLU's maximum inside the transposes that feed weight gradients) ...
    ops = set().union(*(set(v) for v in recomputed.values()))
    assert {"maximum", "multiply"} <= ops, recomputed
    # ... and none with it.
    assert recomputed_in_conv_layouts(on_text) == {}
    assert on_text.count(f'custom_call_target="{M.TARGET}"') >= 2 * 19  # 19 convolutions
    for a, b in zip(jax.tree.leaves(on_grads), jax.tree.leaves(off_grads), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


@needs_barrier
def test_the_oneDNN_conv_gets_the_barrier_when_asked_and_keeps_its_parameters():
    if not onednn.available()[0]:
        pytest.skip(f"oneDNN unavailable here: {onednn.available()[1]}")
    plain = rewrite.apply_to_model(models.create("resnet18", num_classes=10),
                                   _cfg(materialize="off", conv="onednn"))  # fmt: skip
    fast = rewrite.apply_to_model(models.create("resnet18", num_classes=10),
                                  _cfg(materialize="on", conv="onednn"))  # fmt: skip
    assert fast.conv is patch_conv.MATERIALIZED_CONVS["onednn"]
    assert plain.conv is patch_conv.CONVS["onednn"]
    x = jnp.ones((1, 32, 32, 3))
    v = plain.init(jax.random.key(0), x, train=False)
    assert jax.tree.map(jnp.shape, v) == jax.tree.map(
        jnp.shape, fast.init(jax.random.key(0), x, train=False)
    )
    np.testing.assert_allclose(
        fast.apply(v, x, train=False)[0], plain.apply(v, x, train=False)[0], rtol=1e-5, atol=1e-5
    )
    # a model already rewritten is recognised (rewriting twice keeps the barrier's conv)
    again = rewrite.apply_to_model(fast, _cfg(materialize="on", conv="onednn"))
    assert again.conv is patch_conv.MATERIALIZED_CONVS["onednn"]


@needs_barrier
def test_settings_resolve_per_backend_and_bad_values_name_themselves():
    assert rewrite.resolve_materialize("auto", "cpu") is True
    assert rewrite.resolve_materialize("on", "cpu") is True
    assert rewrite.resolve_materialize("off", "cpu") is False
    assert rewrite.resolve_materialize("auto", "gpu") is False
    with pytest.raises(ConfigError, match="CPU backend.*'gpu'"):
        rewrite.resolve_materialize("on", "gpu")
    with pytest.raises(ConfigError, match="'yes'.*auto"):
        rewrite.resolve_materialize("yes", "cpu")


@needs_barrier
def test_sharded_inputs_stay_sharded():
    """With the batch split over 4 devices the barrier must not gather it onto each one."""
    code = textwrap.dedent(
        """
        import os
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
        import jax, jax.numpy as jnp, numpy as np
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        from cnnjax.runtime.materialize import materialize
        mesh = Mesh(np.array(jax.devices()), ("data",))
        sh = NamedSharding(mesh, P("data"))
        f = lambda x: (materialize(jnp.tanh(x)) * 3).sum(axis=(1, 2))
        x = jax.device_put(jnp.ones((8, 4, 3)), sh)
        c = jax.jit(f, in_shardings=sh, out_shardings=sh).lower(x).compile()
        text = c.as_text()
        assert "all-gather" not in text and "all-to-all" not in text, text
        np.testing.assert_allclose(c(x), np.full(8, 12 * 3 * np.tanh(1.0)), rtol=1e-6)
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHONPATH": os.getcwd()})  # fmt: skip
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


def test_without_a_compiler_auto_warns_and_on_is_an_error(tmp_path):
    """A fresh process with no compiler and an empty cache: 'auto' trains without the barrier
    and says why; 'on' is a ConfigError with the reason; nothing half-built is left behind."""
    code = textwrap.dedent(
        """
        import logging, sys
        logging.basicConfig(level=logging.WARNING, stream=sys.stdout)
        from cnnjax.errors import ConfigError
        from cnnjax.models import rewrite
        from cnnjax.runtime import materialize
        ok, why = materialize.available()
        assert not ok and "compiling materialize.cc" in why, why
        assert rewrite.resolve_materialize("auto", "cpu") is False
        try:
            rewrite.resolve_materialize("on", "cpu")
        except ConfigError as e:
            print("ERROR", e)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "CNNJAX_FFI_DIR": str(tmp_path / "ffi"),
           "CXX": "/bin/false"}  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, env=env)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "recompute barrier is unavailable" in out.stdout
    assert "ERROR train.materialize='on' but the barrier is unavailable" in out.stdout
    assert not list((tmp_path / "ffi").rglob("*.so"))


@needs_barrier
def test_the_build_is_cached_per_jaxlib_and_source(tmp_path, monkeypatch):
    monkeypatch.setenv(M.FFI_DIR_ENV, str(tmp_path))
    path = M.build()
    assert path.exists() and path.parent.parent == tmp_path
    mtime = path.stat().st_mtime_ns
    assert M.build() == path and path.stat().st_mtime_ns == mtime  # not rebuilt
    import jaxlib

    assert jaxlib.__version__ in path.parent.name
