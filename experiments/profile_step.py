"""Where the time of one train step goes: a JAX profiler trace of a few steps, summarised.

    python experiments/profile_step.py --model=resnet50 --batch=256 --dtype=bfloat16 [--steps=5]

Builds the same step as `./launch.sh bench` (synthetic batch on the device, SGD momentum),
times it, traces `--steps` steps with `jax.profiler.trace` and reads the trace back with
`jax.profiler.ProfileData`. On a GPU it prints wall ms/step, device-busy ms/step (union of
kernel intervals on all streams), kernels per step, and the kernels grouped by kind
(convolution, GEMM, XLA fusion by type, copies) with their share. The gap between wall and
busy time is per-step overhead (launches, host sync); busy time split by kind says what
the math costs. On CPU it reads the XLA:CPU thunks (one event per HLO instruction run, on
the runtime's worker threads) and groups them the same way by instruction name; the thunks
of a step run partly in parallel on the cores, so their sum can exceed the wall time.

    python experiments/profile_step.py --model=mobilenet_v2 --batch=32 --dtype=float32 \
        --steps=2 --depthwise=shifted
"""

import argparse
import collections
import glob
import re
import tempfile
import time

KINDS = (
    ("convolution", re.compile(r"conv|xmma|implicit|cudnn|dgrad|wgrad|fprop", re.I)),
    ("GEMM / dot", re.compile(r"gemm|cutlass|cublas|matmul|^dot", re.I)),
    ("custom call (oneDNN conv, barrier)", re.compile(r"custom|ffi_call", re.I)),
    ("reduction fusion", re.compile(r"reduce|reduction|input_", re.I)),
    ("triton fusion", re.compile(r"triton", re.I)),
    ("copy/transpose", re.compile(r"copy|transpose|memcpy|memset", re.I)),
    ("loop fusion", re.compile(r"fusion|loop_", re.I)),
)


# XLA:CPU runtime events that are not HLO instructions.
CPU_BOOKKEEPING = ("ThreadpoolListener", "ThunkExecutor", "end: ", "Eigen", "tsl::")


def kind_of(name: str) -> str:
    for kind, pattern in KINDS:
        if pattern.search(name):
            return kind
    return "other"


def build(model_name: str, batch: int, dtype: str, image_size: int, batch_norm: str, **variant):
    """The train step of `./launch.sh bench` (cnnjax.tools.bench.compiled_step); `variant`:
    conv, materialize, depthwise as in the bench."""
    from cnnjax.tools.bench import _image_size, compiled_step

    job = {"model": model_name, "batch": batch, "dtype": dtype, "conv": "auto", "mode": "train",
           "batch_norm": batch_norm, "image_size": _image_size(model_name, image_size),
           **variant}  # fmt: skip
    step, state, data, _ = compiled_step(job)
    return step, state, data


def union_ns(intervals) -> float:
    """Total length of the union of (start, end) intervals."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if a > end:
            total, end = total + (b - a), b
        elif b > end:
            total, end = total + (b - end), b
    return total


def summarise(xplane_path: str, steps: int) -> dict:
    from jax.profiler import ProfileData

    data = ProfileData.from_file(xplane_path)
    kernels = []
    for plane in data.planes:
        if not plane.name.startswith("/device:GPU"):
            continue
        for line in plane.lines:
            if "stream" not in line.name.lower():
                continue
            for e in line.events:
                kernels.append((e.name, e.start_ns, e.start_ns + e.duration_ns))
    if not kernels:  # XLA:CPU: the thunks on the runtime's threads
        for plane in data.planes:
            if plane.name != "/host:CPU":
                continue
            for line in plane.lines:
                if not line.name.startswith("tf_XLA"):
                    continue
                for e in line.events:
                    if not e.name.startswith(CPU_BOOKKEEPING):
                        kernels.append((e.name, e.start_ns, e.start_ns + e.duration_ns))
    by_kind, by_name = collections.Counter(), collections.Counter()
    count = collections.Counter()
    for name, a, b in kernels:
        by_kind[kind_of(name)] += b - a
        by_name[name] += b - a
        count[name] += 1
    return {
        "kernels_per_step": len(kernels) / steps,
        "busy_ms_per_step": union_ns([(a, b) for _, a, b in kernels]) / steps / 1e6,
        "kernel_ms_per_step": sum(b - a for _, a, b in kernels) / steps / 1e6,
        "by_kind_ms": {k: v / steps / 1e6 for k, v in by_kind.most_common()},
        "top": [(n[:90], v / steps / 1e6, count[n] / steps) for n, v in by_name.most_common(15)],
        "by_prefix": _by_prefix(by_name, count, steps),
    }


def _by_prefix(by_name, count, steps, top: int = 12) -> list:
    """Instructions grouped by name without XLA's numeric suffix (all `transpose_copy_fusion.N`
    together): (prefix, ms/step, launches/step), the largest first."""
    ms, n = collections.Counter(), collections.Counter()
    for name, ns in by_name.items():
        prefix = re.sub(r"\.\d+$", "", name)
        ms[prefix] += ns
        n[prefix] += count[name]
    return [(p[:90], v / steps / 1e6, n[p] / steps) for p, v in ms.most_common(top)]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet50")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    p.add_argument("--image_size", type=int, default=0)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch_norm", default="auto", choices=["auto", "onednn", "cnnjax", "flax"])
    p.add_argument("--conv", default="auto", choices=["auto", "onednn", "xla"])
    p.add_argument("--materialize", default="auto", choices=["auto", "on", "off"])
    p.add_argument("--depthwise", default="auto", choices=["auto", "shifted", "xla"])
    p.add_argument("--timed", type=int, default=20, help="Steps timed before the trace.")
    args = p.parse_args()

    import jax

    import cnnjax  # noqa: F401  (the project's XLA flags, as in the bench)

    step, state, data = build(args.model, args.batch, args.dtype, args.image_size, args.batch_norm,
                              conv=args.conv, materialize=args.materialize,
                              depthwise=args.depthwise)  # fmt: skip
    box = [state, None]

    def run(n):
        for _ in range(n):
            box[0], box[1] = step(box[0], data)
        jax.block_until_ready(box[1])

    run(3)
    t = time.perf_counter()
    run(args.timed)
    wall_ms = (time.perf_counter() - t) / args.timed * 1e3
    print(f"{args.model} {args.dtype} batch {args.batch} {args.batch_norm} BN on "
          f"{jax.devices()[0].device_kind}: {wall_ms:.2f} ms/step, "
          f"{args.batch / wall_ms * 1e3:,.0f} img/s")  # fmt: skip
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d):
            run(args.steps)
        path = sorted(glob.glob(f"{d}/**/*.xplane.pb", recursive=True))[-1]
        s = summarise(path, args.steps)
    if not s["kernels_per_step"]:
        print("no kernels or XLA:CPU thunks in the trace: only the wall time above applies")
        return
    print(f"device busy {s['busy_ms_per_step']:.2f} ms/step ({s['busy_ms_per_step'] / wall_ms:.0%}"
          f" of wall), kernel time {s['kernel_ms_per_step']:.2f} ms, "
          f"{s['kernels_per_step']:.0f} kernels/step")  # fmt: skip
    for kind, ms in s["by_kind_ms"].items():
        print(f"  {kind:24s} {ms:8.2f} ms  {ms / s['kernel_ms_per_step']:5.1%}")
    print("by instruction name without its suffix (ms/step, launches/step):")
    for name, ms, n in s["by_prefix"]:
        print(f"  {ms:7.2f} {n:5.0f}  {name}")
    print("top kernels (ms/step, launches/step):")
    for name, ms, n in s["top"]:
        print(f"  {ms:7.2f} {n:5.0f}  {name}")


if __name__ == "__main__":
    main()
