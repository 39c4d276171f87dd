"""malloc on transparent huge pages (cnnjax/runtime/malloc.py): the environment a child gets,
the re-execution of `python -m cnnjax.<tool>` started without it, and the opt-out."""

import os
import subprocess
import sys

import pytest

from cnnjax.runtime import malloc


def test_hugepage_env_adds_the_tunable_once_and_keeps_the_users(monkeypatch):
    monkeypatch.setattr(malloc, "supported", lambda: True)
    env = malloc.hugepage_env({"GLIBC_TUNABLES": "glibc.malloc.tcache_count=0", "A": "1"})
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.tcache_count=0:glibc.malloc.hugetlb=1"
    assert env["A"] == "1" and malloc.in_effect(env)
    assert malloc.hugepage_env(env) == env  # already there: unchanged
    # a user's other hugetlb value is replaced, not duplicated
    other = malloc.hugepage_env({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=2"})
    assert other["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
    monkeypatch.setattr(malloc, "supported", lambda: False)
    assert malloc.hugepage_env({"B": "2"}) == {"B": "2"}


def test_opt_out_and_platform_checks(monkeypatch):
    monkeypatch.setenv(malloc.DISABLE_ENV, "1")
    assert not malloc.supported()
    monkeypatch.delenv(malloc.DISABLE_ENV)
    monkeypatch.setattr(sys, "platform", "darwin")
    assert not malloc.supported()


def _reexec_calls(monkeypatch, argv, env=None):
    calls = []
    monkeypatch.setattr(os, "execve", lambda *a: calls.append(a))
    monkeypatch.setattr(malloc, "supported", lambda: True)
    monkeypatch.setattr(sys, "orig_argv", argv, raising=False)
    for key in ("GLIBC_TUNABLES", malloc._REEXEC_GUARD):
        monkeypatch.delenv(key, raising=False)
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    malloc.reexec_if_needed()
    return calls


def test_a_cnnjax_tool_reexecutes_itself_with_the_tunable_once(monkeypatch):
    argv = ["/usr/bin/python3", "-m", "cnnjax.train", "--config=configs/x.py", "--workdir=w"]
    (call,) = _reexec_calls(monkeypatch, argv)
    path, args, env = call
    assert path == sys.executable and args == [sys.executable, *argv[1:]]
    assert malloc.in_effect(env) and env[malloc._REEXEC_GUARD] == "1"
    # started with it, after one re-execution, or not a cnnjax tool: nothing happens
    assert not _reexec_calls(monkeypatch, argv, {"GLIBC_TUNABLES": malloc.TUNABLE})
    assert not _reexec_calls(monkeypatch, argv, {malloc._REEXEC_GUARD: "1"})
    assert not _reexec_calls(monkeypatch, ["python", "-m", "pytest", "tests"])
    assert not _reexec_calls(monkeypatch, ["python", "notebook.py"])
    assert not _reexec_calls(monkeypatch, ["python", "-c", "import cnnjax"])


@pytest.mark.skipif(not malloc.supported(), reason="no transparent huge pages for malloc here")
def test_a_tool_started_without_it_runs_with_it():
    """End to end: `python -m cnnjax.<tool>` started without the tunable restarts with it
    (`cnnjax.runtime.info` prints the variable it ran with); `import cnnjax` never does."""
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES",)}
    code = "import os, cnnjax; print('TUNABLES', os.environ.get('GLIBC_TUNABLES'))"
    direct = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, timeout=120)  # fmt: skip
    assert "TUNABLES None" in direct.stdout  # an import never re-executes
    tool = subprocess.run(
        [sys.executable, "-m", "cnnjax.runtime.info", "GLIBC_TUNABLES"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert tool.returncode == 0, tool.stderr[-2000:]
    assert tool.stdout.strip() == malloc.TUNABLE


def test_runtime_info_says_what_this_machine_has():
    """`python -m cnnjax.runtime.info`: the XLA flags, the malloc tunables and whether each
    custom call is available (or why not)."""
    from cnnjax.ops import onednn

    out = subprocess.run([sys.executable, "-m", "cnnjax.runtime.info"], capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    keys = ("XLA_FLAGS", "GLIBC_TUNABLES", "oneDNN", "barrier")
    lines = dict(ln.split(None, 1) for ln in out.stdout.splitlines() if ln.startswith(keys))
    assert set(lines) == set(keys)
    assert "huge pages for malloc: " in lines["GLIBC_TUNABLES"]
    ok, why = onednn.available()  # a reason may run over several lines (a compiler's error)
    assert lines["oneDNN"] == ("available" if ok else f"unavailable: {why.splitlines()[0]}")
