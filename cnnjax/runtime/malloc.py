"""Transparent huge pages for malloc: stop every CPU train step page-faulting its memory in.

XLA:CPU allocates each execution's temporary buffers afresh and frees them at its end; glibc
serves allocations over 32 MB with a fresh `mmap` and returns them to the kernel on free, so
every train step faults its whole working set in again, 4 KB at a time: 73,000 minor faults
(286 MB) per ResNet-20 step at batch 128, 202,000 per ResNet-56 step, a quarter of the step
(BENCHMARKS.md, "CPU: oneDNN convolutions, BatchNorm and huge pages"). With glibc's tunable
`glibc.malloc.hugetlb=1` (glibc >= 2.35) malloc asks for transparent huge pages
(`madvise(MADV_HUGEPAGE)`), so the same memory arrives in 2 MB faults: ~880 per ResNet-56
step, the same resident memory. (Keeping freed memory instead, with mallopt, measured as fast
on ResNet-20 but 1.2x slower on ResNet-50 at 224 px with 1.8x its peak memory; not kept.)

glibc reads tunables once, when a process starts, so the setting must be in the environment
before Python runs: `./launch.sh` exports it for everything it starts, `hugepage_env()` adds
it to a child's environment (sweep points, bench workers), and `python -m cnnjax.<tool>`
started without it re-executes itself with it (`reexec_if_needed`, called by `import cnnjax`
before JAX is imported). Where transparent huge pages are off (`never`), on other platforms,
or with CNNJAX_NO_HUGEPAGES=1, nothing changes.
"""

import os
import sys

TUNABLE = "glibc.malloc.hugetlb=1"
DISABLE_ENV = "CNNJAX_NO_HUGEPAGES"
_THP = "/sys/kernel/mm/transparent_hugepage/enabled"
_REEXEC_GUARD = "CNNJAX_HUGEPAGES_REEXEC"


def supported() -> bool:
    """Linux with transparent huge pages available to madvise ('always' or 'madvise'),
    glibc's C library, and not switched off by CNNJAX_NO_HUGEPAGES."""
    if os.environ.get(DISABLE_ENV) or not sys.platform.startswith("linux"):
        return False
    try:
        with open(_THP) as f:
            mode = f.read()
    except OSError:
        return False
    import platform

    return "[never]" not in mode and platform.libc_ver()[0] == "glibc"


def in_effect(env=None) -> bool:
    """Whether `env` (default: this process's environment) carries the tunable."""
    env = os.environ if env is None else env
    return TUNABLE in env.get("GLIBC_TUNABLES", "").split(":")


def hugepage_env(env: dict | None = None) -> dict:
    """A copy of `env` (default os.environ) whose GLIBC_TUNABLES asks malloc for transparent
    huge pages, where `supported()`; a user's other tunables are kept."""
    env = dict(os.environ if env is None else env)
    if not supported() or in_effect(env):
        return env
    tunables = [t for t in env.get("GLIBC_TUNABLES", "").split(":") if t]
    tunables = [t for t in tunables if not t.startswith("glibc.malloc.hugetlb=")]
    env["GLIBC_TUNABLES"] = ":".join([*tunables, TUNABLE])
    return env


def reexec_if_needed() -> None:
    """`python -m cnnjax.<module> ...` without the tunable: exec the same command with it (the
    process starts over before JAX or any data is loaded). Imports in a notebook, a test or
    another program never re-execute."""
    argv = getattr(sys, "orig_argv", None)
    if (
        not argv
        or len(argv) < 3
        or argv[1] != "-m"
        or not argv[2].startswith("cnnjax.")
        or os.environ.get(_REEXEC_GUARD)
        or in_effect()
        or not supported()
    ):
        return
    env = hugepage_env()
    env[_REEXEC_GUARD] = "1"  # one try: a glibc that ignores the tunable cannot loop
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *argv[1:]], env)
