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
from cnnjax.convert.rules import RULES, Rule
from cnnjax.errors import ConfigError, unknown_name

__all__ = ["ConversionError", "from_torchvision", "load_state_dict", "names", "save_safetensors"]

_BN_STATS = {"running_mean": "mean", "running_var": "var"}
_SHOWN = 12  # problems listed per kind; the rest are counted


class ConversionError(ConfigError):
    """A state dict that does not fit the cnnjax model it is converted into."""


def names() -> list[str]:
    """Registry models that torchvision also has (and that convert)."""
    return sorted(n for n in RULES if n in models.names())


def from_torchvision(name: str, state_dict, *, num_classes: int | None = None) -> dict:
    """Converts a torchvision `state_dict` (tensors or arrays) for registry model `name`.

    num_classes defaults to the row count of the rule's head. Returns {'params': ...,
    'batch_stats': ...} as nested dicts of numpy arrays, shaped and typed like
    `models.create(name, num_classes=num_classes).init(...)`. Raises ConversionError listing
    every torch key without a flax home, every flax variable left unfilled and every shape
    mismatch.
    """
    rule = _rule(name)
    arrays = {k: to_numpy(v) for k, v in state_dict.items()}
    if num_classes is None:
        num_classes = _head_rows(rule, arrays, name)
    expected = _expected(name, num_classes)
    filled, homeless, mismatched, seen = {}, [], [], set()
    for key, value in arrays.items():
        if key.endswith(".num_batches_tracked") or rule.dropped(key):
            continue
        path = _flax_path(rule, key, expected)
        if path not in expected:
            homeless.append(f"{key} -> {'/'.join(path)}")
            continue
        seen.add(path)
        value = _layout(rule, key, value, expected[path].shape)
        if value.shape != expected[path].shape:
            mismatched.append(
                f"{key} -> {'/'.join(path)}: expected {expected[path].shape}, got {value.shape}"
            )
            continue
        filled[path] = value.astype(expected[path].dtype)
    unfilled = ["/".join(p) for p in expected if p not in seen]
    if homeless or unfilled or mismatched:
        raise ConversionError(_report(name, homeless, unfilled, mismatched))
    out = traverse_util.unflatten_dict(filled)
    return {"params": out.get("params", {}), "batch_stats": out.get("batch_stats", {})}


def _rule(name: str) -> Rule:
    if name not in RULES or name not in models.names():
        raise unknown_name("torchvision-convertible model", name, names())
    return RULES[name]


def _head_rows(rule: Rule, arrays: dict, name: str) -> int:
    key = f"{rule.head}.weight"
    if key not in arrays:
        raise ConversionError(
            f"state dict for '{name}' has no classifier weight '{key}' to read the class count "
            "from; pass num_classes= explicitly"
        )
    return int(arrays[key].shape[0])


def _expected(name: str, num_classes: int) -> dict[tuple[str, ...], jax.ShapeDtypeStruct]:
    """Flat {('params'|'batch_stats', *path): ShapeDtypeStruct} of the model, traced only."""
    model = models.create(name, num_classes=num_classes)
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


def _layout(rule: Rule, key: str, value: np.ndarray, want: tuple[int, ...]) -> np.ndarray:
    """Torch layout -> flax layout for kernels; everything else passes through."""
    if not key.endswith(".weight"):
        return value
    if value.ndim == 4 and len(want) == 4:  # [O, I/g, kH, kW] -> [kH, kW, I/g, O]
        return value.transpose(2, 3, 1, 0)
    if value.ndim == 2 and len(want) == 2:  # [out, in] -> [in, out]
        hw = rule.flatten_shape(key.rsplit(".", 1)[0])
        if hw is not None:  # torch flattened (C, H, W); cnnjax flattens (H, W, C)
            out, n = value.shape
            c = n // (hw[0] * hw[1])
            value = value.reshape(out, c, *hw).transpose(0, 2, 3, 1).reshape(out, n)
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
