"""Optimisers, schedules, label smoothing and exact metrics: hand-computed values."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnnjax.engine import optim
from cnnjax.errors import ConfigError
from cnnjax.losses.classification import classification_loss, cross_entropy
from cnnjax.metrics.classification import ClassificationMetrics, topk_correct
from tests.conftest import load_config


def optim_cfg(**kw):
    c = load_config("configs/resnet20_cifar.py").optim.copy_and_resolve_references()
    for k, v in kw.items():
        c[k] = v
    return c


def test_piecewise_schedule_divides_by_ten_at_the_paper_boundaries():
    lr = optim.schedule(optim_cfg(), 64_000)  # 0.1, /10 at 32k and 48k
    assert float(lr(0)) == pytest.approx(0.1)
    assert float(lr(31_999)) == pytest.approx(0.1)
    assert float(lr(32_000)) == pytest.approx(0.01)
    assert float(lr(48_000)) == pytest.approx(0.001)


def test_warmup_then_cosine():
    lr = optim.schedule(optim_cfg(schedule="cosine", warmup_steps=10, learning_rate=1.0), 110)
    assert float(lr(0)) == 0.0 and float(lr(5)) == pytest.approx(0.5)
    assert float(lr(10)) == pytest.approx(1.0)
    assert float(lr(60)) == pytest.approx(0.5, abs=1e-6)  # half-way through the cosine
    assert float(lr(110)) == pytest.approx(0.0, abs=1e-6)


def test_piecewise_with_warmup_keeps_absolute_boundaries():
    lr = optim.schedule(optim_cfg(warmup_steps=100), 1000)
    assert float(lr(50)) == pytest.approx(0.05)
    assert float(lr(499)) == pytest.approx(0.1) and float(lr(500)) == pytest.approx(0.01)


def test_weight_decay_is_decoupled_and_masked():
    params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}
    zero = {"kernel": jnp.zeros((2, 2)), "bias": jnp.zeros((2,))}
    for name in ("sgd", "adamw"):
        cfg = optim_cfg(
            name=name,
            schedule="constant",
            learning_rate=0.1,
            weight_decay=0.5,
            weight_decay_on="kernels",
            momentum=0.0,
        )
        tx, _ = optim.create(cfg, 10)
        updates, _ = tx.update(zero, tx.init(params), params)
        new = optax.apply_updates(params, updates)
        np.testing.assert_allclose(new["kernel"], 1 - 0.1 * 0.5, rtol=1e-6)  # decayed
        np.testing.assert_allclose(new["bias"], 1.0)  # zero gradient, no decay on biases


def test_unknown_optimizer_is_a_config_error():
    with pytest.raises(ConfigError, match="optim.name 'rmsprop'"):
        optim.create(optim_cfg(name="rmsprop"), 10)


def test_label_smoothing_cross_entropy_by_hand():
    logits = jnp.array([[2.0, 0.0, 0.0]])
    logp = np.log(np.exp([2.0, 0.0, 0.0]) / np.exp([2.0, 0.0, 0.0]).sum())
    targets = np.array([0.9 + 0.1 / 3, 0.1 / 3, 0.1 / 3])
    got = cross_entropy(logits, jnp.array([0]), label_smoothing=0.1)
    np.testing.assert_allclose(got, [-(targets * logp).sum()], rtol=1e-6)
    np.testing.assert_allclose(cross_entropy(logits, jnp.array([0])), [-logp[0]], rtol=1e-6)


def test_masked_loss_ignores_padding():
    logits = jnp.array([[5.0, 0.0], [0.0, 5.0], [9.0, -9.0]])
    labels = jnp.array([0, 0, 1])
    loss, aux = classification_loss(logits, labels, jnp.array([1.0, 1.0, 0.0]))
    expected = (cross_entropy(logits[:2], labels[:2])).mean()
    assert float(loss) == pytest.approx(float(expected))
    assert float(aux["accuracy"]) == 0.5


def test_topk_and_exact_sums_over_padded_batches():
    logits = jnp.array([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05], [0.2, 0.3, 0.5]])
    labels = jnp.array([2, 0, 0])
    np.testing.assert_array_equal(topk_correct(logits, labels, 1), [0, 1, 0])
    np.testing.assert_array_equal(topk_correct(logits, labels, 2), [1, 1, 0])
    ce = cross_entropy(logits, labels)

    def outputs(rows, mask):
        z, y = logits[rows], labels[rows]
        return {"loss": ce[rows], "top1": topk_correct(z, y, 1), "top5": topk_correct(z, y, 5),
                "mask": jnp.asarray(mask, jnp.float32)}  # fmt: skip

    sums = ClassificationMetrics()
    sums.add(outputs(slice(0, 2), [1.0, 1.0]))
    sums.add(outputs(slice(2, 3), [1.0]))
    sums.add(outputs(slice(0, 3), [0.0, 0.0, 0.0]))  # an all-padding batch adds nothing
    m = sums.result()
    assert m["num_examples"] == 3 and m["accuracy"] == pytest.approx(1 / 3)
    assert m["top5_accuracy"] == 1.0 and m["loss"] == pytest.approx(float(ce.mean()), rel=1e-6)
    # Two processes' shares merged = one accumulator that saw everything.
    a, b = ClassificationMetrics(), ClassificationMetrics()
    a.add(outputs(slice(0, 2), [1.0, 0.0]))
    b.add(outputs(slice(1, 3), [1.0, 1.0]))
    a.merge(b)
    assert a.result() == pytest.approx(m)
    with pytest.raises(ValueError, match="no examples"):
        ClassificationMetrics().result()
