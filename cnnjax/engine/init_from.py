"""Starting a run from pretrained weights: config group `init` applied to a fresh train state.

`init.checkpoint` ('' = off) names a local torchvision state dict (.safetensors or .pth),
converted by name with `cnnjax.convert` as registry model `init.model` ('' = model.name),
or with `init.source = 'cnnjax'` a cnnjax run's workdir: the newest checkpoint that verifies
(its params and BatchNorm statistics, by name; the optimizer state is not taken).
`init.prefix` ('' = the whole model) places the converted weights under that path of the
model's variables: a composite model's nested backbone (e.g. 'backbone' for a detector whose
field `backbone` holds a registry model); everything outside the prefix keeps its fresh
initialisation. Parameters under `init.exclude` (paths of the converted model, by default
its classifier `fc`) keep theirs too, so a head fits the dataset's classes.
`init.freeze_backbone` trains only what was not loaded (the excluded parameters and
everything outside the prefix: a linear probe, or a head on a frozen backbone); loaded
parameters get a zero update. BatchNorm running statistics still follow the data in train
mode; a frozen backbone's weights are bitwise unchanged.
"""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from cnnjax import convert
from cnnjax.config import workdir as wd
from cnnjax.engine.checkpointing import Checkpointer
from cnnjax.errors import ConfigError

SOURCES = ("torchvision", "cnnjax")
_SHOWN = 12


def check(config) -> None:
    """The cheap checks of config group `init`, before anything is written or compiled:
    the source, a convertible model, a weights file (or a run's workdir) that exists."""
    init = config.get("init")
    if init is None or not init.checkpoint:
        return
    if init.source not in SOURCES:
        raise ConfigError(f"init.source '{init.source}' is not one of {list(SOURCES)}")
    if init.source == "cnnjax":
        _check_run(init.checkpoint)
        return
    name = init.get("model", "") or config.model.name
    if name not in convert.names() + convert.segmentation_names():
        raise ConfigError(
            f"init.checkpoint is set but model '{name}' has no torchvision conversion; "
            f"convertible models: {', '.join(convert.names())}"
        )
    if not Path(init.checkpoint).expanduser().is_file():
        raise ConfigError(
            f"init.checkpoint '{init.checkpoint}' does not exist (nothing is downloaded)"
        )


def _check_run(workdir: str) -> None:
    """ConfigError unless `workdir` is a cnnjax run with a saved checkpoint."""
    path = Path(workdir).expanduser()
    if not (path / "config.json").is_file():
        raise ConfigError(
            f"init.checkpoint '{workdir}' is not a cnnjax run directory (no config.json); "
            "init.source 'cnnjax' takes the --workdir of a trained run"
        )
    if not wd.has_checkpoints(path):
        raise ConfigError(f"init.checkpoint '{workdir}' holds no checkpoint yet")


def apply_init(config, state):
    """-> `state` with pretrained params/batch_stats (and a frozen-backbone optimizer)."""
    init = config.get("init")
    if init is None or not init.checkpoint:
        return state
    check(config)
    exclude = tuple(init.exclude)
    prefix = str(init.get("prefix", "")).strip("/")
    name = init.get("model", "") or config.model.name
    kwargs = {} if prefix else dict(config.model.kwargs)  # a nested backbone: as converted
    if init.source == "cnnjax":
        variables, head = _from_run(init.checkpoint), "the classifier"
    else:
        variables, head = _pretrained(name, init.checkpoint, kwargs), convert.head_module(name)
    merge = lambda fresh, coll: _merge(fresh, variables[coll], exclude, coll, head, prefix)
    params, stats = merge(state.params, "params"), merge(state.batch_stats, "batch_stats")
    tx = _frozen_backbone(state.tx, params, exclude, prefix) if init.freeze_backbone else state.tx
    sharding = jax.tree.leaves(state.params)[0].sharding
    opt_state = jax.jit(tx.init, out_shardings=sharding)(params)
    state = state.replace(params=params, batch_stats=stats, tx=tx, opt_state=opt_state)
    if getattr(state, "ema_params", None):  # a weight EMA starts from the loaded weights too
        copy = jax.jit(lambda t: jax.tree.map(jnp.copy, t), out_shardings=sharding)
        state = state.replace(ema_params=copy(params), ema_batch_stats=copy(stats))
    return state


def _pretrained(model_name: str, path: str, model_kwargs: dict) -> dict:
    if model_name not in convert.names() + convert.segmentation_names():
        raise ConfigError(
            f"init.checkpoint is set but model '{model_name}' has no torchvision conversion; "
            f"convertible models: {', '.join(convert.names())}"
        )
    return convert.from_torchvision(model_name, convert.load_state_dict(path), **model_kwargs)


def _from_run(workdir: str) -> dict:
    """{'params', 'batch_stats'} of the newest verified checkpoint of cnnjax run `workdir`
    (numpy, on the host). A process reads it for itself: every process of a multi-host run
    sees the same files."""
    ckpt = Checkpointer(Path(workdir).expanduser() / "checkpoints", create=False)
    try:
        step, state = ckpt.read()
    finally:
        ckpt.close()
    if jax.process_index() == 0:
        print(f"init: {workdir} at step {step}", flush=True)
    return {"params": state["params"], "batch_stats": state.get("batch_stats") or {}}


def _excluded(path: str, exclude: tuple[str, ...]) -> bool:
    return any(path == e or path.startswith(e + "/") for e in exclude)


def _under(path: str, prefix: str) -> str | None:
    """`path` relative to `prefix` ('' = everything), or None if it lies outside."""
    if not prefix:
        return path
    return path[len(prefix) + 1 :] if path.startswith(prefix + "/") else None


def _merge(fresh, loaded, exclude, collection: str, head: str, prefix: str = ""):
    """Pretrained values by name into `fresh` (same tree, dtypes and shardings); `loaded`
    paths are relative to `prefix` in `fresh`."""
    fresh_flat = traverse_util.flatten_dict(fresh, sep="/")
    loaded_flat = traverse_util.flatten_dict(loaded, sep="/")
    out, problems, inside = {}, [], set()
    for full, old in fresh_flat.items():
        path = _under(full, prefix)
        if path is not None:
            inside.add(path)
        if path is None or _excluded(path, exclude):
            out[full] = old
        elif path not in loaded_flat:
            problems.append(f"{collection}/{path}: not in the checkpoint")
        else:
            new = _fit(np.asarray(loaded_flat[path]), old.shape, path)
            if new.shape != old.shape:
                problems.append(
                    f"{collection}/{full}: model has {old.shape}, checkpoint has {new.shape}"
                )
                continue
            new = new.astype(old.dtype)
            out[full] = jax.make_array_from_callback(old.shape, old.sharding, lambda i, a=new: a[i])
    if prefix and not inside and fresh_flat:
        raise ConfigError(
            f"init.prefix '{prefix}' matches no {collection} of the model; top-level modules: "
            f"{sorted({p.split('/')[0] for p in fresh_flat})}"
        )
    extra = [p for p in loaded_flat if p not in inside and not _excluded(p, exclude)]
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


def _frozen_backbone(tx, params, exclude, prefix: str = ""):
    """Only what was not loaded (under `exclude`, or outside `prefix`) is trained; the
    loaded parameters get zero updates."""
    if not exclude and not prefix:
        raise ConfigError(
            "init.freeze_backbone needs init.exclude to name the trainable head, e.g. ('fc',)"
        )
    flat = traverse_util.flatten_dict(params, sep="/")
    loaded = lambda p: _under(p, prefix) is not None and not _excluded(_under(p, prefix), exclude)
    labels = {p: "frozen" if loaded(p) else "head" for p in flat}
    if "head" not in labels.values():
        raise ConfigError(f"init.exclude {list(exclude)} matches no parameter of the model")
    labels = traverse_util.unflatten_dict(labels, sep="/")
    return optax.multi_transform({"head": tx, "frozen": optax.set_to_zero()}, labels)
