"""Compiling and registering the project's XLA FFI handlers (C++ under cnnjax/runtime/ffi/).

Each handler is compiled on the user's machine with its C++ compiler against the FFI headers
jaxlib ships (`jax.ffi.include_dir()`), once per jaxlib version and source hash, under
$CNNJAX_FFI_DIR (default ~/.cache/cnnjax/ffi); `./launch.sh` builds them at set-up. A handler
that cannot be built or loaded raises `Unavailable` with the reason; its users fall back to
XLA's own ops and say so.
"""

import dataclasses
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import jax

FFI_DIR_ENV = "CNNJAX_FFI_DIR"
FFI_SOURCES = Path(__file__).parent / "ffi"


class Unavailable(RuntimeError):
    """A custom call cannot be built or registered here; the message says why."""


def _compiler() -> str:
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not cxx:
        raise Unavailable("no C++ compiler found (set $CXX, or install g++)")
    return cxx


@dataclasses.dataclass(frozen=True)
class Library:
    """One FFI source file, the library compiled from it and its handlers.

    `targets` maps each custom-call target name to its exported symbol; `flags()` returns
    extra compiler / linker arguments (include and library paths of a dependency), raising
    `Unavailable` when the dependency is missing.
    """

    source: Path
    name: str
    targets: tuple[tuple[str, str], ...]
    flags: Callable[[], list[str]] = lambda: []

    def path(self) -> Path:
        """Where the compiled library lives: one file per jaxlib version and source."""
        import jaxlib

        root = (
            os.environ.get(FFI_DIR_ENV)
            or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cnnjax" / "ffi"
        )
        # the flags name a dependency's location (a venv's oneDNN): another location, another
        # library, so a cache shared by two checkouts never links one against the other's
        text = self.source.read_bytes() + " ".join(self.flags()).encode()
        digest = hashlib.sha256(text).hexdigest()[:12]
        return Path(root) / f"jaxlib-{jaxlib.__version__}-{digest}" / f"lib{self.name}.so"

    def build(self, force: bool = False) -> Path:
        """Compiles the library if it is not there yet and returns its path.

        Concurrent builders (parallel sweep points, test workers) each compile into a
        temporary file and rename it into place, so a reader never sees a partial library.
        """
        path = self.path()
        if path.exists() and not force:
            return path
        cxx = _compiler()
        extra = self.flags()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
        os.close(fd)
        cmd = [cxx, "-O2", "-shared", "-fPIC", "-std=c++17", "-w",
               f"-I{jax.ffi.include_dir()}", str(self.source), "-o", tmp, *extra]  # fmt: skip
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as e:
            Path(tmp).unlink(missing_ok=True)
            raise Unavailable(f"compiling {self.source.name} with {cxx} failed: {e}") from e
        if proc.returncode != 0:
            Path(tmp).unlink(missing_ok=True)
            raise Unavailable(
                f"compiling {self.source.name} failed ({' '.join(cmd)}):\n"
                f"{proc.stderr.strip()[-2000:]}"
            )
        os.replace(tmp, path)
        return path


@functools.cache
def register(library: Library) -> None:
    """Builds (if needed), loads and registers `library`'s handlers for the CPU platform,
    once per process; raises `Unavailable` with the reason."""
    import ctypes

    path = library.build()
    try:
        lib = ctypes.cdll.LoadLibrary(str(path))
        handlers = {target: getattr(lib, symbol) for target, symbol in library.targets}
    except (OSError, AttributeError) as e:
        raise Unavailable(f"loading {path} failed: {e}") from e
    for target, handler in handlers.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(handler), platform="cpu")
    _LOADED.append(lib)  # keep the library loaded for the life of the process


_LOADED: list = []


@functools.cache
def status(library: Library) -> tuple[bool, str]:
    """(True, '') when `library`'s handlers are registered; (False, why not) otherwise."""
    try:
        register(library)
    except Unavailable as e:
        return False, str(e)
    return True, ""
