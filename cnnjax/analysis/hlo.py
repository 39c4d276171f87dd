"""Reading XLA's optimized HLO text: which work a compiled step does where.

`recomputed_in_conv_layouts(text)` finds the recompute that cnnjax's barrier removes
(cnnjax/runtime/materialize.py): a fusion whose result is only a layout change (a transpose
or copy feeding a convolution, as XLA:CPU builds for the weight gradient) but which also does
arithmetic, i.e. recomputes the producers (BatchNorm, residual add, ReLU) inside the transpose.

    compiled = jax.jit(step).lower(*args).compile()
    recomputed_in_conv_layouts(compiled.as_text())   # {} when nothing is recomputed
"""

import collections
import re

# Ops that only move or re-lay-out data (a kernel flip is a `reverse`).
DATA_MOVEMENT = frozenset(
    {"parameter", "transpose", "copy", "bitcast", "reshape", "broadcast", "constant", "slice",
     "pad", "reverse", "concatenate", "tuple", "get-tuple-element"}
)  # fmt: skip
_COMPUTATION = re.compile(r"^(?:ENTRY )?%(\S+) .*\{$")
_INSTRUCTION = re.compile(r"^\s*(ROOT )?%(\S+) = .*? ([a-z][a-z0-9\-]*)\(")


def computations(text: str) -> dict[str, list[tuple[str, str, bool, str]]]:
    """HLO module text -> {computation: [(instruction, opcode, is_root, line), ...]}."""
    comps: dict[str, list] = {}
    current = None
    for line in text.splitlines():
        m = _COMPUTATION.match(line)
        if m:
            current = comps.setdefault(m.group(1), [])
            continue
        if line.startswith("}"):
            current = None
            continue
        m = _INSTRUCTION.match(line)
        if current is not None and m:
            current.append((m.group(2), m.group(3), bool(m.group(1)), line))
    return comps


def recomputed_in_conv_layouts(text: str) -> dict[str, dict[str, int]]:
    """{fusion name: {opcode: count}} for every fusion that feeds a convolution, produces a
    pure layout change (its root is a transpose / copy / bitcast / reshape) and still contains
    arithmetic. Empty when every convolution reads its operands from memory as they are."""
    comps = computations(text)
    instr = {name: (op, line) for body in comps.values() for name, op, _, line in body}
    found = {}
    for op, line in instr.values():
        if op != "convolution":
            continue
        args = re.search(r"convolution\(([^)]*)\)", line).group(1)
        for operand in re.findall(r"%([\w.\-]+)", args):
            if operand not in instr or instr[operand][0] != "fusion":
                continue
            called = re.search(r"calls=%([\w.\-]+)", instr[operand][1])
            body = comps.get(called.group(1), []) if called else []
            root = next((o for _, o, is_root, _ in body if is_root), None)
            if root not in ("transpose", "copy", "bitcast", "reshape"):
                continue
            work = collections.Counter(o for _, o, _, _ in body if o not in DATA_MOVEMENT)
            if work:
                found[operand] = dict(work)
    return found
