"""Recurrent classifiers (rnn, lstm, gru, cnn_lstm): output and feature shapes for every read,
parameter counts against the closed formulas of flax's cell layouts (and torch's counts, which
hold one more bias per gate block), forward passes equal to torch.nn.RNN / LSTM / GRU given the
same weights, bfloat16, configuration errors, one jitted engine train step reaching every
parameter, and the configs."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from cnnjax import models
from cnnjax.config import validate
from cnnjax.engine.state import create_state
from cnnjax.errors import ConfigError
from cnnjax.models import rewrite
from tests.conftest import classification_step, image_inputs, load_config

FAST = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}
CELLS = ("rnn", "lstm", "gru")


def _init(model, shape=(2, 8, 8, 1)):
    """Abstract init: ((logits, features), variables) as ShapeDtypeStructs, nothing compiled."""
    return jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x), jnp.zeros(shape))


def _count(tree) -> int:
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(tree))


# ---- Shapes -------------------------------------------------------------------------------------

# (read, T, D) of an 8x8x1 digit.
READ_SHAPES = [("rows", 8, 8), ("columns", 8, 8), ("pixels", 64, 1)]


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.parametrize("read,steps,dim", READ_SHAPES)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_outputs_and_features_for_every_read(name, read, steps, dim, bidirectional):
    model = models.create(name, num_classes=10, hidden_size=16, read=read,
                          bidirectional=bidirectional)  # fmt: skip
    (logits, feats), _ = _init(model)
    width = 32 if bidirectional else 16
    assert logits.shape == (2, 10) and logits.dtype == jnp.float32
    assert {k: v.shape for k, v in feats.items()} == {
        "sequence": (2, steps, dim),
        "hidden": (2, steps, width),
        "pre_logits": (2, width),
    }


def test_reads_order_the_image_as_documented():
    x = jnp.arange(2 * 3 * 4 * 2, dtype=jnp.float32).reshape(2, 3, 4, 2)  # B, H, W, C
    from cnnjax.models.sequence import as_sequence

    rows, cols, pixels = (as_sequence(x, r) for r in ("rows", "columns", "pixels"))
    np.testing.assert_array_equal(rows[1, 2], x[1, 2].reshape(-1))  # step t = row t
    np.testing.assert_array_equal(cols[1, 3], x[1, :, 3].reshape(-1))  # step t = column t
    np.testing.assert_array_equal(pixels[0, 4 * 2 + 1], x[0, 2, 1])  # raster order


def test_cnn_lstm_reads_the_columns_of_its_last_map():
    model = models.create("cnn_lstm", num_classes=10, hidden_size=16)
    (logits, feats), _ = _init(model)
    assert logits.shape == (2, 10)
    assert feats["stride1"].shape == (2, 8, 8, 32) and feats["stride2"].shape == (2, 4, 4, 64)
    assert feats["sequence"].shape == (2, 4, 4 * 64)  # W' steps of H' * C' features
    assert feats["hidden"].shape == (2, 4, 16) and feats["pre_logits"].shape == (2, 16)
    (_, feats), _ = _init(model, (2, 16, 16, 1))  # configs/cnn_lstm.py: 8 steps of 512
    assert feats["sequence"].shape == (2, 8, 512)


def test_headless_model_returns_pre_logits():
    model = models.create("lstm", num_classes=0, hidden_size=16, bidirectional=True)
    (out, feats), variables = _init(model)
    assert out.shape == (2, 32) and "fc" not in variables["params"]


# ---- Parameter counts ---------------------------------------------------------------------------


def cell_params(cell: str, x: int, h: int) -> int:
    """One layer, one direction, in flax's layout (see cnnjax/models/sequence.py): the input and
    hidden Dense of each gate block are summed, so flax gives each block one bias, on the hidden
    side for the LSTM (`h?`), on the input side for the SimpleCell (`i`) and the GRU (`ir`, `iz`,
    `in`), where `hn` keeps a second one (r multiplies W_hn h + b_hn)."""
    return {
        "rnn": h * (x + h) + h,
        "lstm": 4 * (h * (x + h) + h),
        "gru": 3 * h * (x + h) + 4 * h,
    }[cell]


def stack_params(cell, x, h, layers, bidirectional, classes) -> int:
    d = 2 if bidirectional else 1
    rnn = sum(d * cell_params(cell, x if k == 0 else d * h, h) for k in range(layers))
    return rnn + (d * h * classes + classes if classes else 0)


# torch keeps both biases of every gate block: b_ih and b_hh.
TORCH_EXTRA = {"rnn": lambda h: h, "lstm": lambda h: 4 * h, "gru": lambda h: 2 * h}

CASES = [  # (cell, read, hidden, layers, bidirectional)
    ("rnn", "rows", 128, 1, False),
    ("rnn", "pixels", 32, 3, True),
    ("lstm", "rows", 128, 1, False),
    ("lstm", "rows", 64, 2, True),
    ("lstm", "pixels", 7, 3, False),
    ("gru", "rows", 128, 1, False),
    ("gru", "columns", 20, 2, True),
    ("gru", "pixels", 5, 1, True),
]


@pytest.mark.parametrize("cell,read,h,layers,bi", CASES)
def test_parameter_count_matches_the_formula_and_torch(cell, read, h, layers, bi):
    import torch

    model = models.create(cell, num_classes=10, hidden_size=h, num_layers=layers, read=read,
                          bidirectional=bi)  # fmt: skip
    _, variables = _init(model)
    x = {"rows": 8, "columns": 8, "pixels": 1}[read]
    assert _count(variables["params"]) == stack_params(cell, x, h, layers, bi, 10)
    peer = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](
        x, h, layers, bidirectional=bi
    )
    extra = layers * (2 if bi else 1) * TORCH_EXTRA[cell](h)
    torch_count = sum(p.numel() for p in peer.parameters())
    assert _count(variables["params"]) - (10 * h * (2 if bi else 1) + 10) == torch_count - extra


def test_default_lstm_count_and_flax_layout():
    # 4 (128 (8 + 128) + 128) + 128 * 10 + 10 = 71,434 at the defaults on 8x8 digits.
    _, variables = _init(models.create("lstm", num_classes=10))
    assert _count(variables["params"]) == 71_434
    cell = traverse_util.flatten_dict(variables["params"]["layer0"]["cell"], sep="/")
    want = {f"i{g}/kernel": (8, 128) for g in "ifgo"}  # input side: no bias
    want.update({f"h{g}/kernel": (128, 128) for g in "ifgo"})
    want.update({f"h{g}/bias": (128,) for g in "ifgo"})
    assert {k: v.shape for k, v in cell.items()} == want


def test_gru_and_simple_cell_layouts():
    _, variables = _init(models.create("gru", num_classes=10, hidden_size=16))
    cell = traverse_util.flatten_dict(variables["params"]["layer0"]["cell"], sep="/")
    assert sorted(k for k in cell if k.endswith("bias")) == ["hn/bias", "in/bias", "ir/bias",
                                                             "iz/bias"]  # fmt: skip
    _, variables = _init(models.create("rnn", num_classes=10, hidden_size=16))
    cell = traverse_util.flatten_dict(variables["params"]["layer0"]["cell"], sep="/")
    assert {k: v.shape for k, v in cell.items()} == {
        "i/kernel": (8, 16), "i/bias": (16,), "h/kernel": (16, 16)
    }  # fmt: skip


@pytest.mark.parametrize(
    "widths,strides,size", [((32, 64), (1, 2), 8), ((8, 8, 16), (2, 1, 2), 16)]
)
def test_cnn_lstm_parameter_count(widths, strides, size):
    model = models.create("cnn_lstm", num_classes=10, widths=widths, strides=strides,
                          hidden_size=24)  # fmt: skip
    _, variables = _init(model, (2, size, size, 1))
    cin, n = 1, 0
    for w in widths:
        n += 9 * cin * w + 2 * w  # 3x3 conv without bias, BN scale and shift
        cin = w
    side = size // int(np.prod(strides))
    n += cell_params("lstm", side * widths[-1], 24) + 24 * 10 + 10
    assert _count(variables["params"]) == n
    assert _count(variables["batch_stats"]) == 2 * sum(widths)


# ---- Equal to torch's recurrent layers ----------------------------------------------------------


def _torch_weights(cell: str, p: dict) -> dict:
    """flax cell params -> torch's weight_ih [G*h, x], weight_hh [G*h, h], bias_ih, bias_hh
    (gate blocks stacked in torch's order: LSTM i, f, g, o; GRU r, z, n)."""
    cat = lambda ks, side: np.concatenate([np.asarray(p[side + k]["kernel"]).T for k in ks])
    bias = lambda ks, side: np.concatenate(
        [np.asarray(p[side + k]["bias"]) if "bias" in p.get(side + k, {}) else
         np.zeros(p[side + ks[0]]["kernel"].shape[1], np.float32) for k in ks]
    )  # fmt: skip
    gates = {"rnn": [""], "lstm": list("ifgo"), "gru": list("rzn")}[cell]  # rnn: `i`, `h`
    return {
        "weight_ih": cat(gates, "i"),
        "weight_hh": cat(gates, "h"),
        "bias_ih": bias(gates, "i"),
        "bias_hh": bias(gates, "h"),
    }


def _load_torch(peer, cell, params, layers, bidirectional):
    import torch

    state = {}
    for k in range(layers):
        dirs = [("forward_rnn", ""), ("backward_rnn", "_reverse")] if bidirectional else [("", "")]
        for sub, suffix in dirs:
            p = params[f"layer{k}"][sub]["cell"] if sub else params[f"layer{k}"]["cell"]
            for name, w in _torch_weights(cell, p).items():
                state[f"{name}_l{k}{suffix}"] = torch.from_numpy(np.ascontiguousarray(w))
    peer.load_state_dict(state)


@pytest.mark.parametrize(
    "cell,read,layers,bidirectional",
    [("lstm", "rows", 1, False), ("lstm", "pixels", 2, True), ("gru", "rows", 2, True),
     ("rnn", "rows", 1, True)],
)  # fmt: skip
def test_forward_equals_torch_given_the_same_weights(cell, read, layers, bidirectional):
    import torch

    torch.set_num_threads(1)
    h = 16
    model = models.create(cell, num_classes=10, hidden_size=h, num_layers=layers, read=read,
                          bidirectional=bidirectional)  # fmt: skip
    x = jax.random.normal(jax.random.key(1), (3, 8, 8, 1))
    variables = model.init(jax.random.key(0), x)
    # Random biases too: flax initialises them to zero, which would hide a misplaced one.
    leaves, treedef = jax.tree.flatten(variables["params"])
    keys = jax.random.split(jax.random.key(2), len(leaves))
    params = jax.tree.unflatten(
        treedef, [0.3 * jax.random.normal(k, p.shape) for k, p in zip(keys, leaves, strict=True)]
    )
    _, feats = model.apply({"params": params}, x)
    peer = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](
        feats["sequence"].shape[-1], h, layers, batch_first=True, bidirectional=bidirectional
    )
    _load_torch(peer, cell, params, layers, bidirectional)
    with torch.no_grad():
        out, state = peer(torch.from_numpy(np.array(feats["sequence"])))
    h_n = state[0] if cell == "lstm" else state  # [layers * directions, B, h]
    last = torch.cat(list(h_n[-2:]), -1) if bidirectional else h_n[-1]
    np.testing.assert_allclose(np.asarray(feats["hidden"]), out.numpy(), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(feats["pre_logits"]), last.numpy(), atol=1e-5, rtol=1e-5)


# ---- Precision ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [*CELLS, "cnn_lstm"])
def test_bfloat16_rewrite_computes_in_bf16_with_float32_params(name):
    cfg = {"compute_dtype": "bfloat16", "conv": "xla", "batch_norm": "flax"}
    import ml_collections

    model = rewrite.apply_to_model(
        models.create(name, num_classes=10, hidden_size=8, bidirectional=True),
        ml_collections.ConfigDict(cfg),
    )
    # A float32 initial carry would fail here: scan's carry would change dtype after a step.
    (logits, feats), variables = _init(model)
    assert feats["hidden"].dtype == jnp.bfloat16 and logits.dtype == jnp.float32
    assert {p.dtype for p in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}


# ---- Errors -------------------------------------------------------------------------------------

ERRORS = [
    ("lstm", dict(hidden_size=0), (1, 8, 8, 1), r"hidden_size must be >= 1, got 0"),
    ("gru", dict(num_layers=0), (1, 8, 8, 1), r"num_layers must be >= 1, got 0"),
    ("lstm", dict(read="row"), (1, 8, 8, 1), r"unknown read 'row'. Did you mean 'rows'\?"),
    ("rnn", dict(activation="rleu"), (1, 8, 8, 1), r"activation 'rleu'. Did you mean 'relu'\?"),
    ("rnn", dict(cell_init="irn"), (1, 8, 8, 1), r"cell_init 'irn'. Did you mean 'irnn'\?"),
    ("lstm", dict(read="pixels"), (1, 40, 40, 1),
     r"read='pixels' of a 40x40x1 input makes 1600 time steps, more than max_steps=1024"),
    ("gru", {}, (1, 64, 1),
     r"reads NHWC images \[B, H, W, C\].*got an input of shape \(1, 64, 1\)"),
    ("cnn_lstm", dict(widths=(8,)), (1, 8, 8, 1), r"one stride per conv width, got widths=\(8,\)"),
    ("cnn_lstm", dict(strides=(0, 1)), (1, 8, 8, 1), r"strides=\(0, 1\)"),
    ("cnn_lstm", dict(read="pixel"), (1, 8, 8, 1), r"Did you mean 'pixels'\?"),
]  # fmt: skip


@pytest.mark.parametrize("name,kwargs,shape,match", ERRORS)
def test_bad_settings_are_config_errors_naming_the_value(name, kwargs, shape, match):
    model = models.create(name, num_classes=10, **kwargs)
    with pytest.raises(ConfigError, match=match):
        _init(model, shape)


def test_the_trainers_input_check_reports_them_before_compiling():
    model = models.create("rnn", num_classes=10, read="pixels", max_steps=32)
    with pytest.raises(ConfigError, match=r"64 time steps, more than max_steps=32"):
        validate.check_model_input(model, image_inputs((8, 8, 1)))
    with pytest.raises(ConfigError, match=r"no option\(s\) \['hidden'\]"):
        models.create("lstm", num_classes=10, hidden=3)


# ---- One engine train step ----------------------------------------------------------------------

STEP_CASES = [
    ("rnn", dict(activation="tanh")),
    ("rnn", dict(activation="relu", cell_init="irnn", read="pixels")),
    ("lstm", dict(num_layers=2, bidirectional=True)),
    ("gru", dict(read="pixels")),
    ("cnn_lstm", dict(widths=(8, 16))),
]


@pytest.mark.parametrize("name,kwargs", STEP_CASES, ids=[f"{n}-{i}" for i, (n, _) in
                                                         enumerate(STEP_CASES)])  # fmt: skip
def test_one_train_step_reaches_every_parameter(name, kwargs):
    model = models.create(name, num_classes=10, hidden_size=16, **kwargs)
    # Sign SGD: every parameter with a non-zero gradient moves by exactly 1e-3.
    tx = optax.chain(optax.scale_by_sign(), optax.scale(-1e-3))
    state = create_state(model, tx, jax.random.key(0), image_inputs((8, 8, 1)))
    batch = {
        "image": jax.random.normal(jax.random.key(1), (4, 8, 8, 1)),
        "label": jnp.array([0, 3, 7, 9]),
        "mask": jnp.ones((4,), jnp.float32),
    }
    before = jax.device_get(state.params)
    new, metrics = jax.jit(classification_step(10), compiler_options=FAST)(state, batch)
    assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0
    flat_before = traverse_util.flatten_dict(before, sep="/")
    flat_after = traverse_util.flatten_dict(jax.device_get(new.params), sep="/")
    still = [k for k in flat_before if np.array_equal(flat_before[k], flat_after[k])]
    assert still == [], f"no gradient reaches {still}"
    if name != "cnn_lstm" and kwargs.get("activation") != "relu":
        # Smooth cells on Gaussian images: every single weight gets a gradient (after relus,
        # a map position that is zero for the whole batch leaves its input weights unchanged).
        frozen = {k: int((flat_before[k] == flat_after[k]).sum()) for k in flat_before}
        assert sum(frozen.values()) == 0, {k: v for k, v in frozen.items() if v}
    if new.batch_stats:
        moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), state.batch_stats,
                             new.batch_stats)  # fmt: skip
        assert all(jax.tree.leaves(moved))


def test_lstm_fits_a_batch_of_real_digits():
    """A test that can fail for a model that cannot learn: 64 digits, 60 Adam steps."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = jnp.asarray(digits.images[:64, :, :, None] / 16.0, jnp.float32)
    batch = {"image": x, "label": jnp.asarray(digits.target[:64]), "mask": jnp.ones(64)}
    model = models.create("lstm", num_classes=10, hidden_size=32)
    state = create_state(model, optax.adam(2e-2), jax.random.key(0), image_inputs((8, 8, 1)))
    step = jax.jit(classification_step(10), compiler_options=FAST)
    for _ in range(60):
        state, metrics = step(state, batch)
    logits, _ = model.apply(state.variables, x)
    accuracy = float(jnp.mean(jnp.argmax(logits, -1) == batch["label"]))
    assert accuracy >= 0.95, (accuracy, float(metrics["loss"]))


# ---- Configs ------------------------------------------------------------------------------------

CONFIG_ARGS = [
    ("configs/rnn.py", "smoke", dict(read="rows", activation="tanh", cell_init="flax")),
    ("configs/rnn.py", "pixels,smoke", dict(read="pixels")),
    ("configs/rnn.py", "relu,smoke", dict(read="rows", activation="relu", cell_init="irnn")),
    ("configs/lstm.py", "smoke", dict(read="rows")),
    ("configs/lstm.py", "pixels,smoke", dict(read="pixels")),
    ("configs/gru.py", "rows,smoke", dict(read="rows")),
    ("configs/gru.py", "pixels,smoke", dict(read="pixels")),
    ("configs/cnn_lstm.py", "smoke", dict(read="columns", widths=(32, 64))),
]


@pytest.mark.parametrize("path,arg,want", CONFIG_ARGS)
def test_configs_load_and_build_their_model_on_the_digits(path, arg, want):
    config = load_config(path, arg)
    assert config.data.name == "digits" and config.train.num_steps <= 4  # smoke
    assert config.optim.grad_clip_norm > 0 and config.optim.name == "adamw"
    kwargs = config.model.kwargs.to_dict()
    assert {k: kwargs[k] for k in want} == want
    model = models.create(config.model.name, num_classes=10, **kwargs)
    size = config.data.image_size
    validate.check_model_input(model, image_inputs((size, size, 1)))
    full = load_config(path, arg.replace("smoke", "").strip(",") or None)
    assert full.train.num_steps >= 1000 and full.data.batch_size == 128


def test_one_read_per_config():
    with pytest.raises(ConfigError, match="choose one read"):
        load_config("configs/lstm.py", "rows,pixels")


# ---- Per-time-step input gradients ---------------------------------------------------------------


@pytest.mark.parametrize("read", ["rows", "columns", "pixels"])
def test_step_grad_norms_match_a_numpy_loop(read):
    from cnnjax.tasks.classification import step_grad_norms

    g = np.random.default_rng(0).normal(size=(2, 3, 4, 2)).astype(np.float32)
    steps = {"rows": [g[:, t] for t in range(3)], "columns": [g[:, :, t] for t in range(4)],
             "pixels": [g[:, i, j] for i in range(3) for j in range(4)]}[read]  # fmt: skip
    want = np.stack([np.sqrt((s.reshape(2, -1) ** 2).sum(1)) for s in steps], 1)
    np.testing.assert_allclose(step_grad_norms(jnp.asarray(g), read), want, rtol=1e-6)


@pytest.mark.parametrize("name,read", [("rnn", "pixels"), ("gru", "rows")])
def test_eval_reports_each_examples_own_input_gradient_per_step(name, read):
    """The summed-loss gradient splits into per-example gradients (examples are independent in
    eval mode): each row of `input_grad` equals the norm of a one-example jax.grad, and the
    accumulator averages them over the real (unmasked) examples only."""
    from cnnjax.losses.classification import cross_entropy
    from tests.conftest import classification_task

    task = classification_task(10, image_size=8, channels=1, step_grads=read)
    model = models.create(name, num_classes=10, hidden_size=16, read=read)
    x = jax.random.normal(jax.random.key(1), (4, 8, 8, 1))
    batch = {"image": x, "label": jnp.arange(4), "mask": jnp.array([1.0, 1.0, 1.0, 0.0])}
    variables = model.init(jax.random.key(0), x[:1])
    out = jax.jit(task.eval_outputs, static_argnums=0)(model.apply, variables, batch)
    steps = 64 if read == "pixels" else 8
    assert out["input_grad"].shape == (4, steps)
    for i in range(4):
        grad = jax.grad(
            lambda xi, i=i: cross_entropy(model.apply(variables, xi)[0], batch["label"][i : i + 1])[
                0
            ]
        )(x[i : i + 1])
        per_step = np.sqrt((np.asarray(grad)[0] ** 2).sum(-1)).reshape(-1)
        if read == "rows":
            per_step = np.sqrt((np.asarray(grad)[0] ** 2).sum((1, 2)))
        np.testing.assert_allclose(out["input_grad"][i], per_step, rtol=1e-4, atol=1e-9)
    acc = task.metric()
    acc.add(jax.tree.map(np.asarray, out))
    result = acc.result()
    want = np.asarray(out["input_grad"])[:3].mean(0)
    np.testing.assert_allclose(result["input_grad_norm"], want, rtol=1e-6)
    assert result["input_grad_first_last"] == pytest.approx(want[0] / want[-1], rel=1e-6)


def test_step_grads_follow_the_configs_read_one_way_and_reject_bad_names():
    config = load_config("configs/lstm.py", "smoke", ["model.kwargs.read=pixels"])
    assert config.task.kwargs.step_grads == "pixels"
    config = load_config("configs/lstm.py", "smoke", ["task.kwargs.step_grads="])
    assert config.task.kwargs.step_grads == "" and config.model.kwargs.read == "rows"
    from tests.conftest import classification_task

    with pytest.raises(ConfigError, match="'pixel'.*pixels"):
        classification_task(10, step_grads="pixel")


def test_a_list_metric_is_one_tensorboard_tag_per_entry(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from cnnjax.logs.writers import MetricWriter, read_metrics

    writer = MetricWriter(tmp_path)
    norms = [float(v) for v in np.geomspace(1e-9, 1.0, 12)]
    writer.write(5, "eval", {"accuracy": 0.5, "input_grad_norm": norms})
    writer.close()
    assert read_metrics(tmp_path)[0]["input_grad_norm"] == norms
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {f"eval/input_grad_norm/{t:02d}" for t in range(12)} <= set(tags)
    assert events.Scalars("eval/input_grad_norm/00")[0].value == pytest.approx(1e-9, rel=1e-6)


# ---- Arithmetic through the scan ----------------------------------------------------------------


@pytest.mark.parametrize("name,gates", [("rnn", 1), ("lstm", 4), ("gru", 3)])
@pytest.mark.parametrize("read,steps,dim", [("rows", 8, 8), ("pixels", 64, 1)])
def test_arithmetic_counts_every_time_step_of_the_scan(name, gates, read, steps, dim):
    """MACs: gates * h * (x + h) per step for `steps` steps, plus the head; each cell layer is
    listed once (flax's abstract init call of the body leaves no phantom twin)."""
    from cnnjax.analysis import arithmetic

    h = 16
    model = models.create(name, num_classes=10, hidden_size=h, read=read)
    s = arithmetic.analyze(model, (8, 8, 1))
    assert s.macs == gates * h * (dim + h) * steps + h * 10
    assert s.params == _count(_init(model)[1]["params"])
    names = [la.name for la in s.layers]
    assert len(names) == len(set(names)) and not any("#" in n for n in names), names
    assert s.notes == [] and s.receptive_field == 8  # every state has seen the whole read
