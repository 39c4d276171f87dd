"""Shared test set-up: a private tfds data dir and helpers for CLI runs."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _data_dir(tmp_path_factory):
    """Every test (and every subprocess it starts) reads tfds data from one private dir."""
    if "CNNJAX_TEST_DATA_DIR" in os.environ:
        path = os.environ["CNNJAX_TEST_DATA_DIR"]
    else:
        path = str(tmp_path_factory.mktemp("tfds"))
    os.environ["CNNJAX_DATA_DIR"] = path
    # One persistent compilation cache for the session's training subprocesses: each test's
    # run of the same smoke config compiles once, not once per test (configs that name a
    # cache dir, or 'off', still get their own).
    os.environ.setdefault("CNNJAX_COMPILATION_CACHE_DIR", str(tmp_path_factory.mktemp("jax_cache")))
    return path


def run_cli(module: str, *args: str, timeout: int = 600, env: dict | None = None):
    """Runs `python -m module args` from the repo root -> CompletedProcess (text)."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def load_config(name: str, arg: str | None = None):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"cfg_{Path(name).stem}", ROOT / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)
