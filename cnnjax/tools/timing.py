"""Wall-clock timing shared by the benchmarks (no flags, so any tool can import it)."""

import time


def time_windows(run_steps, sync, steps: int, windows: int) -> float:
    """Best seconds per step over `windows` windows of `steps` steps (after 2 warm-ups);
    `run_steps(n)` runs n steps, `sync()` waits for their results."""
    run_steps(2)
    sync()
    best = float("inf")
    for _ in range(windows):
        t = time.perf_counter()
        run_steps(steps)
        sync()
        best = min(best, (time.perf_counter() - t) / steps)
    return best
