"""XLA flags that make CPU training fast; set before JAX creates its backends.

XLA:CPU routes convolutions, dots, elementwise ops and reductions to YNNPACK by default; for
training on the 2-core Zen 3 machines this project is developed on, convolutions through it
measured 1.5-2.1x slower than XLA's own Eigen path, while reductions alone through it (the
BatchNorm statistics and their gradients) made four of five benchmark models 6-35% faster
(ResNet-56 7% slower) with the recompute barrier on (BENCHMARKS.md, "CPU: reductions through
YNNPACK"). So only reductions go to YNNPACK. A user's own XLA_FLAGS win (e.g.
`XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=` for none); CNNJAX_NO_XLA_DEFAULTS=1
leaves XLA's defaults.
"""

import os

CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=reduce",)


def apply_cpu_defaults() -> None:
    if os.environ.get("CNNJAX_NO_XLA_DEFAULTS"):
        return
    flags = os.environ.get("XLA_FLAGS", "")
    for flag in CPU_FLAGS:
        if flag.split("=")[0] not in flags:
            flags = f"{flags} {flag}".strip()
    os.environ["XLA_FLAGS"] = flags
