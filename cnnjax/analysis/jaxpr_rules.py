"""How each jaxpr primitive moves a receptive field, and what it costs in MACs.

`apply(eqn, fields)` takes one equation and the receptive fields of its inputs (None for
values that do not depend on the image: parameters, constants) and returns a `Step`: the
field of its outputs, and for convolutions, pooling windows, global reductions and matrix
products the layer kind, window and MACs. `cnnjax.analysis.arithmetic` walks a model's jaxpr
with it.
"""

import dataclasses
import math
from collections.abc import Sequence

from jax.extend import core as jcore

from cnnjax.ops import shapes

CALLS = {
    "jit",
    "pjit",
    "closed_call",
    "core_call",
    "remat",
    "checkpoint",
    "custom_jvp_call",
    "custom_vjp_call",
    "custom_vjp_call_jaxpr",
    "named_call",
}
CONTROL = {"cond", "while"}  # bodies not walked: their MACs would go uncounted
_POOLS = {
    "reduce_window_max": "max_pool",
    "reduce_window_min": "min_pool",
    "reduce_window_sum": "avg_pool",
}
_REDUCERS = {"max": "max_pool", "min": "min_pool", "add": "avg_pool"}
_GLOBAL = {
    "reduce_sum": "global_avg_pool",
    "reduce_max": "global_max_pool",
    "reduce_min": "global_min_pool",
}


@dataclasses.dataclass(frozen=True)
class Field:
    """Receptive field of one traced value, per spatial axis."""

    rf: tuple[float, ...]
    jump: tuple[float, ...]
    axes: tuple[int, ...] | None  # where the spatial axes sit in the value; None once lost
    # Once a reshape flattens the spatial axes: the field of the whole map (what a layer that
    # mixes every flattened position, e.g. a dense layer, sees); None while axes are known.
    whole: tuple[float, ...] | None = None

    def axis(self, a: int) -> tuple[float, float]:
        if self.axes and a in self.axes:
            i = self.axes.index(a)
            return self.rf[i], self.jump[i]
        return max(self.rf), max(self.jump)


@dataclasses.dataclass(frozen=True)
class Step:
    field: Field | None
    kind: str | None = None  # a layer to list when it runs outside any leaf module
    info: dict = dataclasses.field(default_factory=dict)  # kernel, stride, padding, ...
    macs: int = 0


def apply(eqn, ins: list) -> Step:
    """The effect of one equation on the receptive fields `ins` (one per input)."""
    if not any(ins):
        return Step(None)
    prim = eqn.primitive.name
    if prim == "conv_general_dilated":
        field, info, macs = _conv(eqn, ins[0] or merge(ins, eqn))
        kind = "conv_transpose" if max(eqn.params["lhs_dilation"]) > 1 else "conv"
        return Step(field, kind, info, macs)
    if prim in _POOLS or prim == "reduce_window":
        field, info = _pool(eqn, ins[0] or merge(ins, eqn))
        return Step(field, _POOLS.get(prim) or _REDUCERS.get(_reducer(eqn), "pool"), info)
    if prim in _GLOBAL and ins[0] and ins[0].axes:
        field, pooled = _reduce(eqn, ins[0])
        return Step(field, _GLOBAL[prim] if pooled else None)
    if prim == "dot_general":
        return Step(_dot(eqn, ins), "dot_general", macs=_dot_macs(eqn))
    return Step(_shape_rule(eqn, ins))


def scan_body(eqn):
    """(body jaxpr, length) of a `scan` (nn.RNN, nn.scan), else None."""
    if eqn.primitive.name != "scan":
        return None
    body = eqn.params["jaxpr"]
    return getattr(body, "jaxpr", body), int(eqn.params["length"])


def whole_field(eqn, ins: list) -> Field | None:
    """The field of everything the inputs hold, spatial axes forgotten: what a scan's
    outputs (an RNN's every state, after it has read the whole sequence) can see."""
    wholes = []
    for f, v in zip(ins, eqn.invars, strict=True):
        if f is None:
            continue
        if f.whole is not None:
            wholes.append(f.whole)
        elif f.axes is not None:
            shape = v.aval.shape
            wholes.append(tuple(r + (shape[a] - 1) * j for r, j, a in
                                zip(f.rf, f.jump, f.axes, strict=True)))  # fmt: skip
        else:
            wholes.append(f.rf)
    if not wholes:
        return None
    n = max(len(w) for w in wholes)
    whole = tuple(max(w[i] if len(w) == n else max(w) for w in wholes) for i in range(n))
    fields = [f for f in ins if f is not None]
    return Field(fields[0].rf, fields[0].jump, None, whole)


def inner_jaxpr(eqn):
    """The body of call-like primitives (jit, custom_jvp/vjp, remat) with matching inputs."""
    if eqn.primitive.name not in CALLS:
        return None
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        inner = eqn.params.get(key)
        inner = getattr(inner, "jaxpr", inner)
        if isinstance(inner, jcore.Jaxpr) and len(inner.invars) == len(eqn.invars):
            return inner
    return None


def _conv(eqn, field: Field):
    p, (lhs, rhs), out = eqn.params, eqn.invars, eqn.outvars[0]
    dn = p["dimension_numbers"]
    kernel = tuple(rhs.aval.shape[a] for a in dn.rhs_spec[2:])
    rf, jump = [], []
    for i, a in enumerate(dn.lhs_spec[2:]):
        r, j = field.axis(a)
        step = (kernel[i], p["window_strides"][i], p["rhs_dilation"][i], p["lhs_dilation"][i])
        r, j = shapes.receptive_field_step(r, j, *step)
        rf.append(r)
        jump.append(j)
    transposed = max(p["lhs_dilation"]) > 1
    src, src_spec = (lhs, dn.lhs_spec) if transposed else (out, dn.out_spec)
    size = [src.aval.shape[a] for a in src_spec[2:]]
    c_in, c_out = lhs.aval.shape[dn.lhs_spec[1]], out.aval.shape[dn.out_spec[1]]
    groups = p["feature_group_count"]
    macs = src.aval.shape[src_spec[0]] * shapes.conv_macs(size, c_out, kernel, c_in, groups)
    info = dict(
        kernel=kernel,
        stride=tuple(p["window_strides"]),
        padding=tuple(p["padding"]),
        dilation=tuple(p["rhs_dilation"]),
        groups=groups,
    )
    return Field(tuple(rf), tuple(jump), tuple(dn.out_spec[2:])), info, macs


def _pool(eqn, field: Field):
    p = eqn.params
    window, strides = p["window_dimensions"], p["window_strides"]
    axes = field.axes or tuple(
        a for a, (k, s) in enumerate(zip(window, strides, strict=True)) if k * s > 1
    )
    rf, jump = [], []
    for a in axes:
        r, j = field.axis(a)
        step = (window[a], strides[a], p["window_dilation"][a], p["base_dilation"][a])
        r, j = shapes.receptive_field_step(r, j, *step)
        rf.append(r)
        jump.append(j)
    info = dict(
        kernel=tuple(window[a] for a in axes),
        stride=tuple(strides[a] for a in axes),
        padding=tuple(tuple(p["padding"][a]) for a in axes),
        dilation=tuple(p["window_dilation"][a] for a in axes),
    )
    return Field(tuple(rf), tuple(jump), axes), info


def _reduce(eqn, field: Field):
    """A reduction: global pooling when it removes every spatial axis."""
    reduced = set(eqn.params["axes"])
    if not reduced & set(field.axes):
        kept = tuple(a - sum(r < a for r in reduced) for a in field.axes)
        return Field(field.rf, field.jump, kept), False
    return Field(field.rf, field.jump, None), reduced >= set(field.axes)


def _dot(eqn, ins: list) -> Field:
    (contract, batch) = eqn.params["dimension_numbers"]
    offset, axes = 0, None
    for side, field in enumerate(ins):
        ndim = len(eqn.invars[side].aval.shape)
        free = [a for a in range(ndim) if a not in contract[side] and a not in batch[side]]
        if field is not None and field.axes and axes is None:
            pos = {a: i for i, a in enumerate(batch[side])}
            pos |= {a: len(batch[side]) + offset + i for i, a in enumerate(free)}
            axes = tuple(pos[a] for a in field.axes) if set(field.axes) <= set(pos) else ()
        offset += len(free)
    merged = merge(ins, eqn)
    flat = [f.whole for f in ins if f is not None and f.axes is None and f.whole is not None]
    if flat:  # a dense layer over flattened positions sees the whole map
        whole = tuple(max(w[i] for w in flat) for i in range(len(flat[0])))
        return Field(whole, merged.jump, None, whole)
    return Field(merged.rf, merged.jump, axes or None)


def _dot_macs(eqn) -> int:
    (contract, _), lhs = eqn.params["dimension_numbers"], eqn.invars[0].aval
    return math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs.shape[a] for a in contract[0])


def _shape_rule(eqn, ins: list) -> Field:
    """Everything but windows: strided slices scale the jump, other ops move spatial axes."""
    prim, p = eqn.primitive.name, eqn.params
    if prim not in ("slice", "transpose", "broadcast_in_dim", "squeeze", "reshape"):
        return merge(ins, eqn)  # elementwise, concat, pad...: spatial axes stay where they are
    field = ins[0]
    if field is None or field.axes is None:
        return merge(ins, eqn)
    in_shape, out_shape = eqn.invars[0].aval.shape, eqn.outvars[0].aval.shape
    if prim == "slice":  # a crop keeps the field; a step of s spaces outputs s times wider
        steps = p.get("strides") or (1,) * len(in_shape)
        jump = tuple(j * steps[a] for j, a in zip(field.jump, field.axes, strict=True))
        return Field(field.rf, jump, field.axes)
    if prim == "transpose":
        return _moved(field, {a: p["permutation"].index(a) for a in field.axes})
    if prim == "broadcast_in_dim":
        return _moved(field, dict(enumerate(p["broadcast_dimensions"])))
    if prim == "squeeze":
        return _moved(
            field,
            {
                a: a - sum(d < a for d in p["dimensions"])
                for a in field.axes
                if a not in p["dimensions"]
            },
        )
    moved = _moved(field, _reshape_map(in_shape, out_shape))
    if moved.axes is None:  # flattened: remember the field of the whole map
        whole = tuple(r + (in_shape[a] - 1) * j for r, j, a in
                      zip(field.rf, field.jump, field.axes, strict=True))  # fmt: skip
        return Field(field.rf, field.jump, None, whole)
    return moved


def _moved(field: Field, where: dict) -> Field:
    axes = tuple(where[a] for a in field.axes if a in where)
    return Field(field.rf, field.jump, axes if len(axes) == len(field.axes) else None)


def _reshape_map(a: Sequence[int], b: Sequence[int]) -> dict[int, int]:
    """Axes of shape `a` that survive a reshape to `b` unchanged (size-1 axes aside)."""
    ia, ib = [i for i, n in enumerate(a) if n != 1], [i for i, n in enumerate(b) if n != 1]
    where, p, q = {}, 0, 0
    while p < len(ia) and q < len(ib):
        if a[ia[p]] == b[ib[q]]:
            where[ia[p]] = ib[q]
            p, q = p + 1, q + 1
            continue
        pa, pb, p, q = a[ia[p]], b[ib[q]], p + 1, q + 1
        while pa != pb and p <= len(ia) and q <= len(ib):
            if pa < pb and p < len(ia):
                pa, p = pa * a[ia[p]], p + 1
            elif pb < pa and q < len(ib):
                pb, q = pb * b[ib[q]], q + 1
            else:
                break
    return where


def merge(ins: list, eqn) -> Field:
    """The largest field among inputs (a merge of branches), placed like the first input
    of the output's rank."""
    fields = [f for f in ins if f is not None]
    n = max(len(f.rf) for f in fields)
    rf = tuple(max(f.rf[i] if len(f.rf) == n else max(f.rf) for f in fields) for i in range(n))
    jump = tuple(
        max(f.jump[i] if len(f.jump) == n else max(f.jump) for f in fields) for i in range(n)
    )
    rank = len(eqn.outvars[0].aval.shape)
    wholes = [f.whole for f in fields if f.whole is not None]
    whole = tuple(max(w[i] for w in wholes) for i in range(len(wholes[0]))) if wholes else None
    axes = next(
        (
            f.axes
            for f, v in zip(ins, eqn.invars, strict=True)
            if f is not None and f.axes and len(v.aval.shape) == rank and len(f.axes) == n
        ),
        None,
    )
    return Field(rf, jump, axes, whole if axes is None else None)


def _reducer(eqn) -> str | None:
    inner = getattr(eqn.params.get("jaxpr"), "jaxpr", eqn.params.get("jaxpr"))
    return inner.eqns[-1].primitive.name if inner is not None and inner.eqns else None
