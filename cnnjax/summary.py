"""Per-layer arithmetic of a registry model, without allocating its weights.

    python -m cnnjax.summary --model=resnet50 [--image_size=224] [--num_classes=1000] \
        [--channels=3] [--dtype=float32|bfloat16] [--json] [--noxla]

Prints one row per leaf layer and pooling op (output shape, window, receptive field and
jump, parameters, MACs, activation bytes) and the totals, beside XLA's flop count of the
compiled forward pass. With --json the last line of stdout is one JSON object: params,
macs, activation_bytes, xla_flops, ..., layers[{name, kind, output_shape, params, macs,
receptive_field, ...}]. How layers are found and counted: cnnjax/analysis/arithmetic.py.
"""

import json
import sys

from absl import app, flags

from cnnjax.errors import EXIT_BAD_INPUT, ConfigError

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "Registry model name (cnnjax.models.names()).")
flags.DEFINE_integer("image_size", 224, "Square input size in pixels.", lower_bound=1)
flags.DEFINE_integer("num_classes", 1000, "Classifier outputs.", lower_bound=1)
flags.DEFINE_integer("channels", 3, "Input channels.", lower_bound=1)
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Model compute dtype.")
flags.DEFINE_bool("json", False, "Print one JSON object as the last line instead of a table.")
flags.DEFINE_bool("xla", True, "Also compile the forward pass for XLA's cost analysis.")
flags.mark_flag_as_required("model")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    import jax.numpy as jnp
    from absl import logging

    from cnnjax.analysis import arithmetic

    logging.set_verbosity(logging.WARNING)  # no backend-probing INFO lines around the output

    shape = (FLAGS.image_size, FLAGS.image_size, FLAGS.channels)
    try:
        summary = arithmetic.analyze(
            FLAGS.model,
            shape,
            num_classes=FLAGS.num_classes,
            dtype=jnp.dtype(FLAGS.dtype),
            xla=FLAGS.xla,
        )
    except (ConfigError, ValueError, TypeError) as e:
        print(f"error: model '{FLAGS.model}' at input {shape}: {e}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    if FLAGS.json:
        print(json.dumps(summary.to_dict()))
    else:
        print_table(summary)


def print_table(s) -> None:
    """A rich table of `arithmetic.Summary` `s`, then its totals."""
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, width=None if sys.stdout.isatty() else 180)
    low = s.dtype != "float32"
    table = Table(title=f"{s.model} on {'x'.join(map(str, s.input_shape[1:]))} ({s.dtype})")
    columns = ["layer", "kind", "output", "window", "RF", "jump", "params", "MACs"]
    columns += [f"act {s.dtype}", "act float32"] if low else ["act"]
    for col in columns:
        table.add_column(col, justify="left" if col in ("layer", "kind", "window") else "right")
    for la in s.layers:
        row = [
            la.name,
            la.kind,
            "x".join(map(str, la.output_shape[1:])),
            window(la),
            _hw(la.receptive_field_hw),
            _hw(la.jump_hw),
            f"{la.params:,}",
            f"{la.macs:,}",
            _bytes(la.activation_bytes),
        ]
        table.add_row(*row, *([_bytes(la.activation_bytes_float32)] if low else []))
    console.print(table)
    for line in totals(s):
        console.print(line)


def totals(s) -> list[str]:
    lines = [
        f"params       {s.params:,} ({s.params / 1e6:.3f} M)",
        f"MACs         {s.macs:,} ({s.macs / 1e9:.3f} G; torchvision's 'GFLOPS')",
        f"activations  {_bytes(s.activation_bytes)} {s.dtype}"
        + (f", {_bytes(s.activation_bytes_float32)} float32" if s.dtype != "float32" else ""),
        f"receptive field  {s.receptive_field:g} px (largest of any layer)",
    ]
    if s.xla_flops is not None:
        ratio = s.xla_flops / (2 * s.macs) if s.macs else float("nan")
        lines.append(
            f"XLA flops    {s.xla_flops:,.0f} ({s.xla_flops / 1e9:.3f} G = {ratio:.3f} x 2 x MACs:"
            " XLA skips multiplies with padding and adds elementwise ops)"
        )
    return lines + [f"note: {n}" for n in s.notes]


def window(la) -> str:
    """'3x3/2 p1 d2 g32': kernel, stride, padding, dilation, groups (only what differs)."""
    if la.kernel is None:
        return ""
    text = "x".join(map(str, la.kernel))
    if la.stride and max(la.stride) > 1:
        text += "/" + _hw(la.stride)
    pads = {p for pair in la.padding or () for p in pair}
    if pads - {0}:
        text += f" p{pads.pop()}" if len(pads) == 1 else f" p{list(map(list, la.padding))}"
    if la.dilation and max(la.dilation) > 1:
        text += " d" + _hw(la.dilation)
    if la.groups and la.groups > 1:
        text += f" g{la.groups}"
    return text


def _hw(values) -> str:
    if not values:
        return ""
    values = [f"{v:g}" for v in values]
    return values[0] if len(set(values)) == 1 else "x".join(values)


def _bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def parse_flags(argv):
    try:
        return FLAGS(argv)
    except flags.Error as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


if __name__ == "__main__":
    import cnnjax  # noqa: F401  (sets XLA defaults before JAX starts)

    app.run(main, flags_parser=parse_flags)
