"""Starting a run from pretrained weights: config group `init` applied to a fresh train state.

`init.checkpoint` ('' = off) names a local torchvision state dict (.safetensors or .pth),
converted by name with `cnnjax.convert`. Parameters under `init.exclude` (the classifier,
by default `fc`) keep their fresh initialisation so the head fits the dataset's classes.
`init.freeze_backbone` trains only those excluded parameters (a linear probe); every other
parameter gets a zero update. BatchNorm running statistics still follow the data in train
mode; a frozen backbone's weights are bitwise unchanged.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from cnnjax import convert
from cnnjax.errors import ConfigError

SOURCES = ("torchvision",)
_SHOWN = 12


def apply_init(config, state):
    """-> `state` with pretrained params/batch_stats (and a frozen-backbone optimizer)."""
    init = config.get("init")
    if init is None or not init.checkpoint:
        return state
    if init.source not in SOURCES:
        raise ConfigError(f"init.source '{init.source}' is not one of {list(SOURCES)}")
    exclude = tuple(init.exclude)
    variables = _pretrained(config.model.name, init.checkpoint, dict(config.model.kwargs))
    head = convert.head_module(config.model.name)
    params = _merge(state.params, variables["params"], exclude, "params", head)
    stats = _merge(state.batch_stats, variables["batch_stats"], exclude, "batch_stats", head)
    tx = _frozen_backbone(state.tx, params, exclude) if init.freeze_backbone else state.tx
    sharding = jax.tree.leaves(state.params)[0].sharding
    opt_state = jax.jit(tx.init, out_shardings=sharding)(params)
    state = state.replace(params=params, batch_stats=stats, tx=tx, opt_state=opt_state)
    if getattr(state, "ema_params", None):  # a weight EMA starts from the loaded weights too
        copy = jax.jit(lambda t: jax.tree.map(jnp.copy, t), out_shardings=sharding)
        state = state.replace(ema_params=copy(params), ema_batch_stats=copy(stats))
    return state


def _pretrained(model_name: str, path: str, model_kwargs: dict) -> dict:
    if model_name not in convert.names():
        raise ConfigError(
            f"init.checkpoint is set but model '{model_name}' has no torchvision conversion; "
            f"convertible models: {', '.join(convert.names())}"
        )
    return convert.from_torchvision(model_name, convert.load_state_dict(path), **model_kwargs)


def _excluded(path: str, exclude: tuple[str, ...]) -> bool:
    return any(path == e or path.startswith(e + "/") for e in exclude)


def _merge(fresh, loaded, exclude, collection: str, head: str):
    """Pretrained values by name into `fresh` (same tree, dtypes and shardings)."""
    fresh_flat = traverse_util.flatten_dict(fresh, sep="/")
    loaded_flat = traverse_util.flatten_dict(loaded, sep="/")
    out, problems = {}, []
    for path, old in fresh_flat.items():
        if _excluded(path, exclude):
            out[path] = old
        elif path not in loaded_flat:
            problems.append(f"{collection}/{path}: not in the checkpoint")
        else:
            new = _fit(np.asarray(loaded_flat[path]), old.shape, path)
            if new.shape != old.shape:
                problems.append(
                    f"{collection}/{path}: model has {old.shape}, checkpoint has {new.shape}"
                )
                continue
            new = new.astype(old.dtype)
            out[path] = jax.make_array_from_callback(old.shape, old.sharding, lambda i, a=new: a[i])
    extra = [p for p in loaded_flat if p not in fresh_flat and not _excluded(p, exclude)]
    problems += [f"{collection}/{p}: in the checkpoint but not in the model" for p in extra]
    if problems:
        shown = "\n  ".join(problems[:_SHOWN])
        more = f"\n  ... and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
        raise ConfigError(
            f"pretrained weights do not fit the model ({len(problems)} parameter(s)):\n  "
            f"{shown}{more}\nAdd the differing modules to config.init.exclude (now "
            f"{list(exclude)}; this model's head is '{head}') to keep their fresh initialisation."
        )
    return traverse_util.unflatten_dict(out, sep="/")


def _fit(kernel: np.ndarray, want: tuple, path: str) -> np.ndarray:
    """An RGB stem kernel [kH, kW, 3, O] for a 1-channel input: sum over colours (as timm)."""
    grey = kernel.ndim == 4 and len(want) == 4 and kernel.shape[2] == 3 and want[2] == 1
    if grey and kernel.shape[:2] + kernel.shape[3:] == want[:2] + want[3:]:
        if jax.process_index() == 0:
            print(f"init: {path} summed over RGB for 1-channel input", flush=True)
        return kernel.sum(axis=2, keepdims=True)
    return kernel


def _frozen_backbone(tx, params, exclude):
    """Only parameters under `exclude` are trained; the rest get zero updates."""
    if not exclude:
        raise ConfigError(
            "init.freeze_backbone needs init.exclude to name the trainable head, e.g. ('fc',)"
        )
    flat = traverse_util.flatten_dict(params, sep="/")
    labels = {p: "head" if _excluded(p, exclude) else "frozen" for p in flat}
    if "head" not in labels.values():
        raise ConfigError(f"init.exclude {list(exclude)} matches no parameter of the model")
    labels = traverse_util.unflatten_dict(labels, sep="/")
    return optax.multi_transform({"head": tx, "frozen": optax.set_to_zero()}, labels)
