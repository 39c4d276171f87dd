"""torchvision state dicts -> cnnjax variables, by name, with every mismatch reported at once.

    sd = load_state_dict("resnet50-11ad3fa6.pth")      # local file; never unpickles code
    variables = from_torchvision("resnet50", sd)        # {'params': ..., 'batch_stats': ...}
    logits, _ = models.create("resnet50", num_classes=1000).apply(variables, x_nhwc)

Layouts: conv weight [O, I/groups, kH, kW] -> kernel [kH, kW, I/groups, O]; linear
[out, in] -> kernel [in, out]; BatchNorm weight/bias -> scale/bias and running_mean/var ->
batch_stats mean/var; num_batches_tracked is dropped.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from cnnjax import models
from cnnjax.convert.files import load_state_dict, save_safetensors, to_numpy
from cnnjax.convert.rules import RULES, SEGMENTATION_RULES, Rule
from cnnjax.errors import ConfigError, unknown_name

__all__ = [
    "ConversionError",
    "check",
    "from_torchvision",
    "head_module",
    "load_state_dict",
    "names",
    "save_safetensors",
    "segmentation_names",
]

_BN_STATS = {"running_mean": "mean", "running_var": "var"}
_SHOWN = 12  # problems listed per kind; the rest are counted


class ConversionError(ConfigError):
    """A state dict that does not fit the cnnjax model it is converted into."""


def names() -> list[str]:
    """Registry models that torchvision also has (and that convert)."""
    return sorted(n for n in RULES if n in models.names())


def segmentation_names() -> list[str]:
    """Registry segmentation models that convert from `torchvision.models.segmentation`."""
    return sorted(n for n in SEGMENTATION_RULES if n in models.names())


def head_module(name: str) -> str:
    """The flax module of `name`'s classifier ('fc', 'classifier_6', ...): what to re-init."""
    rule = _rule(name)
    return rule.flax_module(rule.head)


def from_torchvision(
    name: str, state_dict, *, num_classes: int | None = None, **model_kwargs
) -> dict:
    """Converts a torchvision `state_dict` (tensors or arrays) for registry model `name`.

    num_classes defaults to the row count of the rule's head; model_kwargs are the model's
    options (e.g. googlenet's aux_logits=True). Returns {'params': ..., 'batch_stats': ...}
    as nested dicts of numpy arrays, shaped and typed like `models.create(...).init(...)`.
    Raises ConversionError listing every torch key without a flax home, every flax variable
    left unfilled and every shape mismatch.
    """
    arrays = {k: to_numpy(v) for k, v in state_dict.items()}
    shapes = {k: v.shape for k, v in arrays.items()}
    rule = _rule(name)
    expected = _expected(name, num_classes or _head_rows(rule, shapes, name), model_kwargs)
    plan = _plan(name, rule, shapes, expected)
    filled = {
        path: _layout(key, arrays[key], expected[path].shape).astype(expected[path].dtype)
        for key, path in plan.items()
    }
    out = traverse_util.unflatten_dict(filled)
    return {"params": out.get("params", {}), "batch_stats": out.get("batch_stats", {})}


def check(
    name: str, shapes: dict, *, num_classes: int | None = None, **model_kwargs
) -> dict[str, str]:
    """Dry run of `from_torchvision` on shapes alone ({torch key: shape}, no data).

    -> {torch key: 'params/...' or 'batch_stats/...' flax path} for every converted key;
    raises the same ConversionError as `from_torchvision` would.
    """
    shapes = {k: tuple(s) for k, s in shapes.items()}
    rule = _rule(name)
    expected = _expected(name, num_classes or _head_rows(rule, shapes, name), model_kwargs)
    return {k: "/".join(p) for k, p in _plan(name, rule, shapes, expected).items()}


def _plan(name: str, rule: Rule, shapes: dict, expected: dict) -> dict[str, tuple[str, ...]]:
    """{torch key: flax path} with layouts checked against `expected`; all problems at once."""
    plan, homeless, mismatched = {}, [], []
    for key, shape in shapes.items():
        if key.endswith(".num_batches_tracked"):
            continue
        path = _flax_path(rule, key, expected)
        if path not in expected:
            if not rule.is_optional(key):
                homeless.append(f"{key} -> {'/'.join(path)}")
            continue
        want = expected[path].shape
        # A zero-strided stand-in runs the real layout code on the shape without any data.
        got = _layout(key, np.broadcast_to(np.float32(0), shape), want).shape
        if got != want:
            mismatched.append(f"{key} -> {'/'.join(path)}: expected {want}, got {got}")
        plan[key] = path
    placed = set(plan.values())
    unfilled = ["/".join(p) for p in expected if p not in placed]
    if homeless or unfilled or mismatched:
        raise ConversionError(_report(name, homeless, unfilled, mismatched))
    return plan


def _rule(name: str) -> Rule:
    rules = {**RULES, **SEGMENTATION_RULES}
    if name not in rules or name not in models.names():
        raise unknown_name("torchvision-convertible model", name, names() + segmentation_names())
    return rules[name]


def _head_rows(rule: Rule, shapes: dict, name: str) -> int:
    key = f"{rule.head}.weight"
    if key not in shapes:
        raise ConversionError(
            f"state dict for '{name}' has no classifier weight '{key}' to read the class count "
            "from; pass num_classes= explicitly"
        )
    return int(shapes[key][0])


def _expected(name: str, num_classes: int, model_kwargs: dict) -> dict:
    """Flat {('params'|'batch_stats', *path): ShapeDtypeStruct} of the model, traced only."""
    model = models.create(name, num_classes=num_classes, **model_kwargs)
    x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
    return traverse_util.flatten_dict(dict(shapes))


def _flax_path(rule: Rule, key: str, expected) -> tuple[str, ...]:
    module, leaf = key.rsplit(".", 1)
    path = tuple(rule.flax_module(module).split("/"))
    if leaf in _BN_STATS:
        return ("batch_stats", *path, _BN_STATS[leaf])
    if leaf == "weight":
        # Torch calls both a conv/linear kernel and a norm scale 'weight'; the model says which.
        scale = ("params", *path, "scale")
        return scale if scale in expected else ("params", *path, "kernel")
    return ("params", *path, leaf)


def _layout(key: str, value: np.ndarray, want: tuple[int, ...]) -> np.ndarray:
    """Torch layout -> flax layout for kernels; everything else passes through."""
    if not key.endswith(".weight"):
        return value
    if value.ndim == 4 and len(want) == 4:  # [O, I/g, kH, kW] -> [kH, kW, I/g, O]
        return value.transpose(2, 3, 1, 0)
    if value.ndim == 2 and len(want) == 2:  # [out, in] -> [in, out]
        return value.T
    return value


def _report(name, homeless, unfilled, mismatched) -> str:
    lines = [f"torchvision state dict does not fit cnnjax model '{name}':"]
    for title, items in [
        ("torch keys without a flax home", homeless),
        ("flax variables not filled", unfilled),
        ("shape mismatches (flax layout)", mismatched),
    ]:
        if items:
            lines.append(f"  {len(items)} {title}:")
            lines += [f"    {item}" for item in items[:_SHOWN]]
            if len(items) > _SHOWN:
                lines.append(f"    ... and {len(items) - _SHOWN} more")
    return "\n".join(lines)
