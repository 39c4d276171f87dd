"""XLA flags that make CPU training fast; set before JAX creates its backends.

XLA:CPU routes convolutions and BatchNorm reductions to YNNPACK by default, which
measured 1.5-1.8x slower than XLA's own Eigen path for training on the 2-core Zen 3
machines this project is developed on (see BENCHMARKS.md). A user's own XLA_FLAGS win.
"""

import os

CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=",)


def apply_cpu_defaults() -> None:
    if os.environ.get("CNNJAX_NO_XLA_DEFAULTS"):
        return
    flags = os.environ.get("XLA_FLAGS", "")
    for flag in CPU_FLAGS:
        if flag.split("=")[0] not in flags:
            flags = f"{flags} {flag}".strip()
    os.environ["XLA_FLAGS"] = flags
