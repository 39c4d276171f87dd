"""Reading state dicts from local files without executing pickled code.

safetensors files are read with the `safetensors` package (no torch needed); torch files
(zip or legacy) with `torch.load(weights_only=True)`, which refuses anything but tensors
and plain containers. Nothing here downloads.
"""

import pickle
import struct
from pathlib import Path

import numpy as np

from cnnjax.errors import ConfigError

_INSTALL = "install the extra with: pip install -e '.[torch]'"
_WRAPPERS = ("state_dict", "model")  # common checkpoint dicts that wrap a state dict


def to_numpy(value) -> np.ndarray:
    """A torch tensor (any device, bfloat16 included) or array-like -> numpy array."""
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def load_state_dict(path) -> dict[str, np.ndarray]:
    """Reads a local .safetensors or torch (.pth/.pt) state dict -> {torch key: array}."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"state dict file '{path}' does not exist (nothing is downloaded)")
    kind = _sniff(path)
    if kind == "safetensors":
        return _load_safetensors(path)
    if kind == "torch":
        return _load_torch(path)
    raise ConfigError(
        f"'{path}' is neither a safetensors file nor a torch checkpoint (zip or pickle); "
        "expected a torchvision state dict saved with safetensors or torch.save"
    )


def save_safetensors(state_dict: dict, path) -> None:
    """Writes {key: tensor or array} as a safetensors file (torch not needed)."""
    try:
        from safetensors.numpy import save_file
    except ImportError as e:
        raise ConfigError(f"writing '{path}' needs the safetensors package; {_INSTALL}") from e
    arrays = {k: np.ascontiguousarray(to_numpy(v)) for k, v in state_dict.items()}
    save_file(arrays, str(path))


def _sniff(path: Path) -> str:
    with path.open("rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        return "torch"
    if len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] > 0:
        return "safetensors"
    return "unknown"


def _load_safetensors(path: Path) -> dict[str, np.ndarray]:
    try:
        from safetensors.numpy import load_file
    except ImportError as e:
        raise ConfigError(f"reading '{path}' needs the safetensors package; {_INSTALL}") from e
    return dict(load_file(str(path)))


def _load_torch(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as e:
        raise ConfigError(
            f"'{path}' is a torch file and reading it needs torch; {_INSTALL}, or convert it "
            "to .safetensors where torch is installed"
        ) from e
    try:
        obj = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        raise ConfigError(
            f"refusing to load '{path}': it pickles objects other than tensors and plain "
            "containers, and cnnjax never executes pickled code (torch.load weights_only=True "
            f"said: {str(e).splitlines()[0]}). Save the model's state_dict() instead."
        ) from e
    return {k: to_numpy(v) for k, v in _unwrap(obj, path).items()}


def _unwrap(obj, path: Path) -> dict:
    """The {str: tensor} state dict in `obj`, also when wrapped as {'state_dict': ...}."""
    if isinstance(obj, dict):
        for key in _WRAPPERS:
            if isinstance(obj.get(key), dict) and len(obj) <= 3:
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise ConfigError(f"'{path}' holds a {type(obj).__name__}, not a state dict of tensors")
    bad = sorted(str(k) for k, v in obj.items() if not hasattr(v, "detach"))
    if bad:
        raise ConfigError(f"'{path}' is not a plain state dict: entries {bad[:8]} are not tensors")
    return obj
