"""Every registry entry, at its real depth and width, trains: two train steps on a batch of two
at (about) the smallest input the architecture accepts; finite metrics; every parameter and
every BatchNorm statistic moved; and the second step reuses the first one's executable.

A new entry is covered by being registered. The default suite (`./launch.sh test`) trains
one entry of each block type and stem; the other entries carry the `zoo_full` mark and run in
`./launch.sh test-zoo`, CI's second stage (19 min on 2 cores: XLA's compile time grows faster
than linearly with the step's size, ResNet-50's 10k HLO lines compile in 9 s, DenseNet-201's
39k in 200 s). ResNet-1202 (226k HLO lines; hours to compile as one program) takes its steps
op by op.

The family tests (test_models_*.py) add shortened variants with non-default options (LRN,
classifier widths, width multipliers) and the eval path.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnnjax import models
from cnnjax.engine.state import TrainState
from cnnjax.models.detection import MODELS as DETECTION
from cnnjax.models.segmentation import MODELS as SEGMENTATION
from tests.conftest import classification_step

# Unoptimised XLA:CPU code: the same HLO and the same jit cache behaviour, compiled several
# times faster; the steps are tiny, so compiling is what this file spends.
FAST = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}

# In `./launch.sh test`: the cheap entries of the basic block types and stems (~1.5 CPU-minutes;
# GoogLeNet also trains in tests/test_aux_loss.py).
# Every other entry carries the zoo_full mark and runs in `./launch.sh test-zoo`, CI's second
# stage, so a newly registered name is tested there without being listed here.
IN_SUITE = {
    "lenet5",
    "alexnet",
    "vgg11_bn",
    "squeezenet1_0",
    "squeezenet1_1",
    "resnet18",
    "plain18",
    "preact_resnet18",
    "resnet20_cifar",  # option-A shortcuts
    "plain20_cifar",
    "mobilenet_v1",
}
OP_BY_OP = {"resnet1202_cifar"}

# Input side per entry: the smallest at which every BatchNorm'd map is still at least 2x2, so
# that with a batch of two each channel's statistics cover >= 8 values (over a 1x1 map BN
# turns each channel into exactly +-1 and passes no gradient upstream: DenseNet, plain nets
# and ShuffleNets then leave parameters unchanged or blow up). Models without BatchNorm use
# the architecture's own minimum (require_min_size). Stride-32 nets: 33 px (a 2x2 last map).
# (prefix, size, channels); the first matching prefix wins, every other entry uses 33 px RGB.
SIZES = (
    ("lenet5", 28, 1),  # MNIST digits (padded to the paper's 32 px framing inside)
    ("alexnet", 63, 3),
    ("squeezenet1_0", 21, 3),
    ("squeezenet1_1", 17, 3),
    ("vgg", 32, 3),  # the BN variants' last convolutions run on 2x2 maps
    ("googlenet", 47, 3),
    ("xception", 39, 3),
    ("densenet", 61, 3),
    ("mobilenet_v1", 63, 3),  # its unpadded stride-2 convolutions floor the map sizes
)
CIFAR_SIZE = 8  # the CIFAR ResNets' total stride is 4
# Sign SGD: every parameter with a non-zero gradient moves by exactly 1e-3 per step, whatever
# the gradient's scale. Plain SGD turns plain152's gradient norm at init (~1e14: a BN net
# without shortcuts explodes gradients with depth) into NaNs, and clipping the global norm
# leaves the small gradients of other layers below float resolution. It also compiles the
# fewest kernels (ResNet-50: 1998 against 2159 for SGD with momentum, 2323 for Adam).
TX = optax.chain(optax.scale_by_sign(), optax.scale(-1e-3))
train_step = classification_step(10)  # the engine's step with a 10-class task


def input_shape(name: str) -> tuple[int, int]:
    if name.endswith("_cifar"):
        return CIFAR_SIZE, 3
    return next(((s, c) for p, s, c in SIZES if name.startswith(p)), (33, 3))


def host_state(model, x, tx):
    """-> (the train state `create_state` builds, with variables filled on the host: kernels
    ~ U(-a, a) with a = sqrt(3 / fan_in) (LeCun uniform: variance 1 / fan_in), BN scale and
    running variance 1, every other leaf 0; the model's feature shapes at `x`).

    Compiling a real model's initialisers costs about a third of compiling its train step
    (ResNet-152: 20 s, EfficientNet-B7: 49 s on the 2-core test machine); the initialisers are
    traced here and by the abstract shape tests of each family.
    """
    (_, features), shapes = jax.eval_shape(
        lambda x: model.init_with_output(jax.random.key(0), x, train=False), x
    )
    rng = np.random.default_rng(0)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":  # float32 uniform: 4x faster than normal for VGG's 138M
            bound = np.sqrt(3.0 / np.prod(leaf.shape[:-1]), dtype=np.float32)
            kernel = rng.random(leaf.shape, dtype=np.float32)
            kernel -= 0.5
            kernel *= 2 * bound
            return jnp.asarray(kernel, leaf.dtype)
        return jnp.full(leaf.shape, 1.0 if name in ("scale", "var") else 0.0, leaf.dtype)

    variables = jax.tree_util.tree_map_with_path(fill, shapes)
    state = TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        batch_stats=variables.get("batch_stats", {}),  # a plain {} like create_state's
        tx=tx,
        rng=jax.random.PRNGKey(0),
        ema_params={},
        ema_batch_stats={},
    )
    # Committed device arrays (as the trainer's jitted init gives), so that the first step
    # sees the same argument signature as the second (a Python-int `step` would not).
    return jax.device_put(state, jax.devices()[0]), features


def signature(tree):
    """What jit's cache key reads from its arguments: tree structure, shape, dtype, weak type."""
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, [(a.shape, a.dtype, a.weak_type) for a in map(jax.typeof, leaves)]


def unchanged(before, after) -> list[str]:
    """Paths of the leaves (host arrays) that did not change at all."""
    same = jax.tree_util.tree_map_with_path(
        lambda p, a, b: jax.tree_util.keystr(p) if np.array_equal(a, b) else None, before, after
    )
    return [p for p in jax.tree.leaves(same) if p is not None]


def _params(name):
    marks = [] if name in IN_SUITE else [pytest.mark.zoo_full]
    return pytest.param(name, marks=marks, id=name)


# Every registry classifier (the autoencoder, the segmentation models and the detectors
# have their own task's tests).
CLASSIFIERS = [
    n
    for n in models.names()
    if "num_classes" in models.fields(n) and n not in SEGMENTATION and n not in DETECTION
]


def test_every_listed_name_is_registered():
    # A renamed ResNet-1202 would otherwise be compiled as one program (hours).
    assert sorted((IN_SUITE | OP_BY_OP) - set(models.names())) == []


# The op-by-op entry (the longest: 6 min) first, so that a pytest-xdist worker starts it at once.
@pytest.mark.parametrize(
    "name", [_params(n) for n in sorted(CLASSIFIERS, key=lambda n: n not in OP_BY_OP)]
)
def test_registry_entry_trains_two_steps_with_one_compile(name):
    model = models.create(name, num_classes=10)
    size, channels = input_shape(name)
    x = jax.random.normal(jax.random.key(1), (2, size, size, channels))
    batch = {"image": x, "label": jnp.array([0, 7]), "mask": jnp.ones((2,), jnp.float32)}
    # The second step sees other images: a unit that happens to sit exactly on relu's kink
    # for one batch (zero gradient; rounding decides, e.g. a deep plain net's constant
    # channel) still gets a gradient from the other.
    x2 = jax.random.normal(jax.random.key(2), x.shape)
    batch2 = {**batch, "image": x2, "label": jnp.array([3, 1])}
    state, features = host_state(model, x, TX)
    if state.batch_stats:
        # 'stride{s}'/'pool{k}' maps repeat these or follow the last BatchNorm (VGG's pool5).
        named = {k: f for k, f in features.items() if not k.startswith(("stride", "pool"))}
        maps = {k: f.shape[1:3] for k, f in named.items() if f.ndim == 4}
        assert min(min(hw) for hw in maps.values()) >= 2, (
            f"{name} at {size} px has a BatchNorm'd map under 2x2 ({maps}): give it a larger "
            "size in SIZES"
        )
    # Host copies: the checks below compile nothing.
    host = lambda s: jax.device_get({"params": s.params, "batch_stats": s.batch_stats})
    before = host(state)

    if name in OP_BY_OP:
        # What jit keys its cache on is unchanged by a step, so a jitted step would not
        # recompile; the steps themselves run op by op (each op compiled once per shape).
        new_state, _ = jax.eval_shape(train_step, state, batch)
        assert signature(new_state) == signature(state)
        with jax.disable_jit():
            state, _ = train_step(state, batch)
            mid = host(state)
            state, metrics = train_step(state, batch2)
    else:
        # A fresh partial: jax.jit shares one cache among wrappers of the same function object.
        step = jax.jit(functools.partial(train_step), compiler_options=FAST)
        state, _ = step(state, batch)
        mid = host(state)
        state, metrics = step(state, batch2)
        assert step._cache_size() == 1  # the second step reused the first one's executable
    after = host(state)
    metrics = jax.device_get(metrics)
    assert int(state.step) == 2
    assert {"loss", "accuracy", "grad_norm"} <= set(metrics)
    assert all(np.isfinite(v) for v in metrics.values()), metrics
    assert all(np.all(np.isfinite(p)) for p in jax.tree.leaves(after))
    # Every leaf moves in at least one of the two steps. (Not "differs after both": sign SGD
    # takes a small leaf exactly back where it was when every gradient sign flips, as
    # efficientnet_b1's 4-unit squeeze-excitation bias did.)
    for coll in ("params", "batch_stats"):
        stuck = set(unchanged(before[coll], mid[coll])) & set(unchanged(mid[coll], after[coll]))
        assert sorted(stuck) == [], coll
