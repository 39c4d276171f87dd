"""experiments/profile_step.py reads XLA:CPU's thunk events from a real profiler trace."""

import glob

import jax
import jax.numpy as jnp

from tests.test_report import _load_script


def test_cpu_trace_is_summarised_by_instruction(tmp_path):
    prof = _load_script("experiments/profile_step.py")
    f = jax.jit(lambda x: jnp.sum(jnp.tanh(x @ x) ** 2))
    x = jnp.ones((128, 128))
    f(x).block_until_ready()
    with jax.profiler.trace(str(tmp_path)):
        for _ in range(2):
            f(x).block_until_ready()
    path = sorted(glob.glob(f"{tmp_path}/**/*.xplane.pb", recursive=True))[-1]
    s = prof.summarise(path, steps=2)
    assert s["kernels_per_step"] >= 1 and s["kernel_ms_per_step"] > 0
    assert not any(n.startswith(prof.CPU_BOOKKEEPING) for n, _, _ in s["top"])
    assert abs(sum(s["by_kind_ms"].values()) - s["kernel_ms_per_step"]) < 1e-6
