"""One depthwise convolution layer, forward and each gradient, three ways side by side: XLA's
grouped convolution, cnnjax's shifted multiplies (cnnjax/ops/depthwise.py; its weight
gradient is XLA's) and PyTorch (NCHW and channels_last).

    ./launch.sh bench-depthwise [--layers=32x112x112x32:3:1,...] [--json]

A layer is BATCHxHxWxC:KERNEL:STRIDE ('SAME' padding, float32). Parts: `forward`, `input
grad` (the vjp with respect to the input alone), `weight grad` (the vjp with respect to the
kernel alone), `train` (forward and both gradients, as a train step needs them). Each time
is the fastest of `--windows` windows of `--steps` calls after warm-up, all in this one
process, one after another.
"""

import json

from absl import app, flags

from cnnjax.tools.timing import time_windows

FLAGS = flags.FLAGS
# MobileNet-V2's widest depthwise layers at 224 px, batch 32 (features_1, features_2,
# features_4) and EfficientNet-B0's first 5x5 (stage 3).
DEFAULT_LAYERS = "32x112x112x32:3:1,32x112x112x96:3:2,32x56x56x144:3:1,32x56x56x144:5:2"
flags.DEFINE_string("layers", DEFAULT_LAYERS, "Comma-separated BxHxWxC:K:S layers.")
flags.DEFINE_integer("steps", 3, "Calls per timed window.")
flags.DEFINE_integer("windows", 2, "Timed windows; the fastest is reported.")
flags.DEFINE_boolean("json", False, "One JSON line per row instead of a table.")

PARTS = ("forward", "input grad", "weight grad", "train")


def parse_layer(text: str) -> tuple[tuple[int, int, int, int], int, int]:
    from cnnjax.errors import ConfigError

    try:
        shape, k, s = text.split(":")
        b, h, w, c = (int(v) for v in shape.split("x"))
        k, s = int(k), int(s)
    except ValueError as e:
        raise ConfigError(
            f"layer {text!r} is not BATCHxHxWxC:KERNEL:STRIDE, e.g. 32x112x112x32:3:1"
        ) from e
    if min(b, h, w, c, k, s) < 1:
        raise ConfigError(f"layer {text!r}: every size must be >= 1")
    return (b, h, w, c), k, s


def _jax_parts(shape, k: int, s: int, impl: str) -> dict:
    import jax
    import jax.numpy as jnp
    from jax import lax

    from cnnjax.ops import depthwise

    c = shape[-1]

    def conv(x, w):
        if impl == "shifted":
            return depthwise.depthwise_conv(x, w, (s, s), "SAME")
        return lax.conv_general_dilated(x, w, (s, s), "SAME", dimension_numbers=depthwise._NHWC,
                                        feature_group_count=c)  # fmt: skip

    kx, kw = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, shape)
    w = jax.random.normal(kw, (k, k, 1, c)) * 0.1
    g = jnp.ones_like(jax.eval_shape(conv, x, w))
    fns = {
        "forward": jax.jit(conv),
        "input grad": jax.jit(lambda x, w: jax.vjp(lambda x_: conv(x_, w), x)[1](g)[0]),
        "weight grad": jax.jit(lambda x, w: jax.vjp(lambda w_: conv(x, w_), w)[1](g)[0]),
        "train": jax.jit(lambda x, w: jax.vjp(conv, x, w)[1](g)),
    }
    return {part: _time_jax(fn, x, w) for part, fn in fns.items()}


def _time_jax(fn, x, w) -> float:
    import jax

    box = {}

    def run(n):
        for _ in range(n):
            box["out"] = fn(x, w)

    return time_windows(run, lambda: jax.block_until_ready(box["out"]), FLAGS.steps, FLAGS.windows)


def _torch_parts(shape, k: int, s: int, channels_last: bool) -> dict:
    import torch

    b, h, w_, c = shape
    conv = torch.nn.Conv2d(c, c, k, s, padding=k // 2, groups=c, bias=False)
    x = torch.randn(b, c, h, w_)
    if channels_last:
        conv = conv.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)

    def forward():
        with torch.no_grad():
            conv(x)

    def grad(inputs):
        def run():
            y = conv(x)
            torch.autograd.grad(y, inputs, torch.ones_like(y))

        return run

    fns = {"forward": forward, "input grad": grad([x]), "weight grad": grad([conv.weight]),
           "train": grad([x, conv.weight])}  # fmt: skip
    out = {}
    for part, fn in fns.items():
        out[part] = time_windows(lambda n, fn=fn: [fn() for _ in range(n)], lambda: None,
                                 FLAGS.steps, FLAGS.windows)  # fmt: skip
    return out


def rows(layer_text: str) -> list[dict]:
    shape, k, s = parse_layer(layer_text)
    impls = {
        "xla grouped conv": lambda: _jax_parts(shape, k, s, "xla"),
        "cnnjax shifted": lambda: _jax_parts(shape, k, s, "shifted"),
        "torch NCHW": lambda: _torch_parts(shape, k, s, False),
        "torch channels_last": lambda: _torch_parts(shape, k, s, True),
    }
    out = []
    for impl, fn in impls.items():
        for part, sec in fn().items():
            out.append({"layer": layer_text, "impl": impl, "part": part, "ms": sec * 1e3})
    return out


def main(argv):
    del argv
    import sys

    from cnnjax.errors import EXIT_BAD_INPUT, ConfigError

    try:
        layers = [parse_layer(t) and t for t in FLAGS.layers.split(",") if t]
    except ConfigError as e:
        print(f"error: --layers: {e}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    for layer in layers:
        table = rows(layer)
        if FLAGS.json:
            for r in table:
                print(json.dumps(r), flush=True)
            continue
        print(f"\n{layer} (ms)")
        print(f"{'':22s}" + "".join(f"{p:>13s}" for p in PARTS))
        for impl in dict.fromkeys(r["impl"] for r in table):
            ms = {r["part"]: r["ms"] for r in table if r["impl"] == impl}
            print(f"{impl:22s}" + "".join(f"{ms[p]:13.1f}" for p in PARTS), flush=True)


if __name__ == "__main__":
    import cnnjax  # noqa: F401  (sets XLA defaults before JAX starts)

    app.run(main)
