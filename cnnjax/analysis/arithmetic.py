"""Per-layer arithmetic of any flax model: shapes, receptive fields, parameters, MACs, memory.

`analyze("resnet50")` (or `analyze(module, input_shape)`) traces the model abstractly and
returns a `Summary` of per-layer `Layer` records and totals. No weight is ever allocated:

1. `jax.make_jaxpr` traces `model.init_with_output` (inference mode) on an abstract image
   under `nn.intercept_methods`: one trace gives the variable shapes and the forward pass.
   The interceptor wraps every module `__call__` in a `jax.named_scope` carrying a call id,
   so each primitive in the jaxpr knows the module calls it ran inside. A call that calls no
   other module is a leaf layer (Conv, ConvTranspose, Dense, BatchNorm, Dropout, ...).
2. Parameters per layer are the sizes of `variables['params']` under the leaf's path.
3. One walk over the jaxpr, in program order, gives each traced value a receptive field
   (r, j) per spatial axis, from (1, 1) at the image: convolutions and pooling windows apply
   `r_out = r_in + (K_eff - 1) * j_in, j_out = j_in * S` (a transposed convolution of stride
   T: `r_in + floor((K_eff - 1) / T) * j_in, j_in * S / T`, see `ops.shapes`), strided slices
   multiply j, and every other primitive passes on the elementwise max over its inputs.
   The jaxpr is the model's dataflow graph, so branches
   and merges are exact rather than approximated by call order: a GoogLeNet branch sees only
   the values it was computed from, and an add or concat takes the largest field among its
   inputs. MACs are counted on the `conv_general_dilated` and `dot_general` primitives that
   depend on the image, so hand-written convolutions count too.

Pooling is not a module in flax (`nn.max_pool` is a function), so pooling layers are the
`reduce_window_*` primitives outside leaf layers (nn.max_pool, nn.avg_pool, lax.reduce_window,
cnnjax.ops.pooling alike) plus reductions over every spatial axis (global pooling); they are
named after the enclosing module ('inception3a/max_pool'). A pooling written as reshape +
mean (adaptive pooling over an evenly divisible map) is not listed; at 224 px the adaptive
pools of AlexNet and VGG are identities.

Counting conventions follow torchvision's published "GFLOPS" (which are MACs): a convolution
costs H_out * W_out * C_out * K_h * K_w * C_in / groups (a transposed one H_in * W_in * ...,
its zeros skipped), a dense layer in * out; BatchNorm, activations, pooling, adds and biases
cost 0. XLA's `cost_analysis()` of the compiled forward pass (`xla=True`) differs in two
ways: it counts 2 flops per multiply-add but only for kernel taps that land on real input
(taps on zero padding are skipped: a 3x3 'SAME' conv on 32x32 costs (94/96)^2 = 0.959 of
2 * MACs, a 'VALID' one exactly 2 * MACs), and it adds the elementwise ops (BN scale and
shift, ReLU, residual adds, pool comparisons, about 4 per BN+ReLU element). For ResNet-50 at
224 px the two nearly cancel (0.978 * 2 * MACs); small maps lose more to padding (ResNet-20
on CIFAR: 0.936). `activation_bytes` sums the outputs of the listed layers (what an eager
framework holds for backprop, in-place ReLU and adds excluded); XLA's fused inference
keeps far fewer alive.
"""

import dataclasses
import inspect
import math
import numbers
import re
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.extend import core as jcore

from cnnjax.analysis import jaxpr_rules as rules

_SCOPE = "cnnjax_call"
_SCOPE_RE = re.compile(rf"{_SCOPE}(\d+)")


@dataclasses.dataclass
class Layer:
    """One leaf module call or pooling op. Shapes include the batch of 1; counts are per image."""

    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int = 0
    macs: int = 0
    activation_bytes: int = 0  # output size in the dtype it is computed in
    activation_bytes_float32: int = 0
    receptive_field: float | None = None  # input pixels, largest over the spatial axes
    jump: float | None = None  # input pixels between neighbouring outputs, largest over axes
    receptive_field_hw: tuple[float, ...] | None = None  # per spatial axis
    jump_hw: tuple[float, ...] | None = None
    kernel: tuple[int, ...] | None = None
    stride: tuple[int, ...] | None = None
    padding: tuple[tuple[int, int], ...] | None = None
    dilation: tuple[int, ...] | None = None
    groups: int | None = None


@dataclasses.dataclass
class Summary:
    model: str
    input_shape: tuple[int, ...]  # (1, H, W, C)
    dtype: str
    layers: list[Layer]
    params: int  # every entry of variables['params']; batch_stats are not parameters
    macs: int
    activation_bytes: int
    activation_bytes_float32: int
    receptive_field: float  # the largest receptive field of any layer, input pixels
    xla_flops: float | None = None
    xla_bytes_accessed: float | None = None
    notes: list[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["layers"] = [{k: _plain(v) for k, v in layer.items()} for layer in d["layers"]]
        return {k: _plain(v) for k, v in d.items()}


@dataclasses.dataclass
class _Call:
    path: str
    kind: str
    parent: int | None
    children: int = 0
    outputs: tuple = ()


def analyze(
    model: str | nn.Module,
    input_shape: Sequence[int] = (224, 224, 3),
    *,
    num_classes: int = 1000,
    dtype: Any = jnp.float32,
    xla: bool = False,
) -> Summary:
    """Per-layer arithmetic of a registry model name (built with `num_classes` and `dtype`;
    a model with `out_channels` instead, e.g. the autoencoder, gets the input's channels) or
    of a flax module, for one example of `input_shape` (H, W, C) float32. `xla=True` also
    compiles the forward pass for XLA's own flop count (seconds for big models)."""
    if isinstance(model, str):
        from cnnjax import models  # a tool above the model layer; ops/ stays model-free

        kwargs = {} if jnp.dtype(dtype) == jnp.float32 else {"dtype": dtype}
        fields = models.fields(model)
        if "num_classes" in fields:
            kwargs["num_classes"] = num_classes
        if "out_channels" in fields:
            kwargs["out_channels"] = int(input_shape[-1])
        name, model = model, models.create(model, **kwargs)
    else:
        name = type(model).__name__
    if len(input_shape) < 2 or not all(isinstance(n, numbers.Integral) for n in input_shape):
        raise ValueError(f"input_shape must be positive ints (H, W, C), got {input_shape!r}")
    if min(input_shape) < 1:
        raise ValueError(f"input_shape must be positive ints (H, W, C), got {input_shape!r}")
    x = jax.ShapeDtypeStruct((1, *map(int, input_shape)), jnp.float32)
    kw = {"train": False} if "train" in inspect.signature(model.__call__).parameters else {}
    tracer = _Tracer(model, kw)
    closed, (_, variables) = jax.make_jaxpr(tracer.init, return_shape=True)(x)
    spatial = tuple(range(1, len(x.shape) - 1))
    image = rules.Field((1,) * len(spatial), (1,) * len(spatial), spatial)
    walker = _Walker(tracer.calls, variables.get("params", {}))
    walker.walk(closed.jaxpr, [image], [])
    layers = walker.layers()
    summary = Summary(
        model=name,
        input_shape=tuple(x.shape),
        dtype=jnp.dtype(dtype).name,
        layers=layers,
        params=sum(math.prod(p.shape) for p in jax.tree.leaves(variables.get("params", {}))),
        macs=sum(layer.macs for layer in layers),
        activation_bytes=sum(layer.activation_bytes for layer in layers),
        activation_bytes_float32=sum(layer.activation_bytes_float32 for layer in layers),
        receptive_field=max((la.receptive_field or 1 for la in layers), default=1),
        notes=sorted(walker.notes),
    )
    if xla:
        cost = xla_cost(model, variables, x, kw)
        summary.xla_flops, summary.xla_bytes_accessed = cost["flops"], cost["bytes_accessed"]
    return summary


def xla_cost(model: nn.Module, variables, x, call_kwargs: dict) -> dict:
    """XLA's cost analysis of the compiled inference forward pass (abstract inputs)."""
    fwd = jax.jit(lambda v, x: model.apply(v, x, **call_kwargs))
    cost = fwd.lower(variables, x).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return {"flops": cost.get("flops"), "bytes_accessed": cost.get("bytes accessed")}


class _Tracer:
    """Records module calls and marks their primitives with a named scope per call."""

    def __init__(self, model: nn.Module, call_kwargs: dict):
        self.model, self.call_kwargs = model, call_kwargs
        self.calls: list[_Call] = []
        self._stack: list[int] = []

    def init(self, x):
        """`model.init_with_output` on image `x`: one trace gives both the forward pass and
        the variable shapes. Initializers never touch the image, so the walk ignores them."""
        self.calls.clear()
        with nn.intercept_methods(self._intercept):
            return self.model.init_with_output(jax.random.key(0), x, **self.call_kwargs)

    def _intercept(self, next_fun, args, kwargs, context):
        if context.method_name != "__call__":  # helpers and setup run inside their caller
            return next_fun(*args, **kwargs)
        cid, parent = len(self.calls), self._stack[-1] if self._stack else None
        call = _Call("/".join(context.module.path), type(context.module).__name__, parent)
        self.calls.append(call)
        if parent is not None:
            self.calls[parent].children += 1
        self._stack.append(cid)
        try:
            with jax.named_scope(f"{_SCOPE}{cid}"):
                out = next_fun(*args, **kwargs)
        finally:
            self._stack.pop()
        arrays = [a for a in jax.tree.leaves(out) if hasattr(a, "shape")]
        call.outputs = tuple((tuple(a.shape), jnp.dtype(a.dtype)) for a in arrays)
        return out


class _Walker:
    """Walks a jaxpr once: receptive fields per value, MACs and kernels per layer."""

    def __init__(self, calls: list[_Call], params):
        self.calls, self.params = calls, params
        self.leaf_layers = {
            i: self._leaf_layer(i, c) for i, c in enumerate(calls) if not c.children
        }
        self.ops: list[tuple[tuple[int, int], Layer]] = []
        self.notes: set[str] = set()
        self._last_call, self._names = -1, {}
        self._repeat = 1  # how many times the jaxpr being walked runs (a scan body: length)

    def layers(self) -> list[Layer]:
        self._drop_phantoms()
        keyed = [((i, 0), la) for i, la in self.leaf_layers.items()] + self.ops
        ordered = [la for _, la in sorted(keyed, key=lambda kv: kv[0])]
        for prev, la in zip(ordered, ordered[1:], strict=False):
            if la.receptive_field is None:  # no primitives ran (an identity Dropout)
                for key in ("receptive_field", "receptive_field_hw", "jump", "jump_hw"):
                    setattr(la, key, getattr(prev, key))
        return ordered

    def _drop_phantoms(self) -> None:
        """Drops calls that left no image-dependent primitive in the jaxpr while another call
        of the same module did (or, if none did, all but the last): flax's lifted transforms
        (nn.RNN's scan) first call the body abstractly to create its variables, and
        parameter holders (OptimizedLSTMCell's DenseParams) compute nothing themselves. The
        survivors are named as if called once."""
        dead = [i for i, la in self.leaf_layers.items() if la.receptive_field is None]
        live = {self.calls[i].path for i in self.leaf_layers if i not in dead}
        last = {self.calls[i].path: i for i in dead}
        for i in dead:
            if self.calls[i].path in live or last[self.calls[i].path] != i:
                del self.leaf_layers[i]
        seen: dict[str, int] = {}
        for i, la in sorted(self.leaf_layers.items()):
            path = self.calls[i].path
            n = seen[path] = seen.get(path, 0) + 1
            la.name = (path or self.calls[i].kind) + (f"#{n}" if n > 1 else "")

    def walk(self, jaxpr, fields: list, scope: list[int]) -> list:
        env = dict(zip(jaxpr.invars, fields, strict=True))
        for eqn in jaxpr.eqns:
            ids = scope + [int(m) for m in _SCOPE_RE.findall(str(eqn.source_info.name_stack))]
            self._last_call = max([self._last_call, *ids])
            ins = [None if isinstance(v, jcore.Literal) else env.get(v) for v in eqn.invars]
            inner, scan = rules.inner_jaxpr(eqn), rules.scan_body(eqn)
            if inner is not None:
                outs = self.walk(inner, ins, ids)
            elif scan is not None:
                # The body runs `length` times: its MACs count that often. Every value it
                # makes may have seen the whole sequence (a recurrence), so the body walks
                # on whole-input fields and every output of the scan gets that field too.
                body, length = scan
                whole = rules.whole_field(eqn, ins)
                consts = eqn.params["num_consts"]  # then the carry, then the scanned inputs
                fields = ins[:consts] + [whole] * (len(ins) - consts)
                self._repeat, outer = self._repeat * length, self._repeat
                try:
                    self.walk(body, fields, ids)
                finally:
                    self._repeat = outer
                outs = [whole] * len(eqn.outvars)
            else:
                if eqn.primitive.name in rules.CALLS | rules.CONTROL and any(
                    f is not None for f in ins
                ):  # an initializer's cond does not touch the image
                    self.notes.add(f"MACs inside '{eqn.primitive.name}' are not counted")
                step = rules.apply(eqn, ins)
                self._record(eqn, ids, step)
                outs = [step.field] * len(eqn.outvars)
            env.update(zip(eqn.outvars, outs, strict=True))
        return [None if isinstance(v, jcore.Literal) else env.get(v) for v in jaxpr.outvars]

    def _record(self, eqn, ids: list[int], step: rules.Step):
        """Adds the step to its innermost leaf layer, or lists it as a layer of its own."""
        leaf = next((i for i in reversed(ids) if i in self.leaf_layers), None)
        if leaf is not None:
            layer = self.leaf_layers[leaf]
            layer.macs += step.macs * self._repeat
            if step.field is not None:
                _set_field(layer, step.field)
            if step.info and layer.kernel is None:
                _set_info(layer, step.info)
        elif step.kind is not None:
            owner = self.calls[ids[-1]].path if ids else ""
            base = f"{owner}/{step.kind}" if owner else step.kind
            n = self._names[base] = self._names.get(base, -1) + 1
            aval = eqn.outvars[0].aval
            layer = Layer(f"{base}_{n}" if n else base, step.kind, tuple(aval.shape))
            layer.macs = step.macs * self._repeat
            layer.activation_bytes = math.prod(aval.shape) * jnp.dtype(aval.dtype).itemsize
            layer.activation_bytes_float32 = math.prod(aval.shape) * 4
            _set_field(layer, step.field)
            _set_info(layer, step.info)
            self.ops.append(((self._last_call, len(self.ops) + 1), layer))

    def _leaf_layer(self, i: int, call: _Call) -> Layer:
        repeat = sum(c.path == call.path for c in self.calls[:i])
        name = (call.path or call.kind) + (f"#{repeat + 1}" if repeat else "")
        shape = call.outputs[0][0] if call.outputs else ()
        layer = Layer(name, call.kind, shape, params=_subtree_size(self.params, call.path))
        layer.activation_bytes = sum(math.prod(s) * d.itemsize for s, d in call.outputs)
        layer.activation_bytes_float32 = sum(math.prod(s) * 4 for s, _ in call.outputs)
        return layer


def _set_field(layer: Layer, field: rules.Field):
    layer.receptive_field, layer.receptive_field_hw = max(field.rf), field.rf
    layer.jump, layer.jump_hw = max(field.jump), field.jump


def _set_info(layer: Layer, info: dict):
    for k, v in info.items():
        setattr(layer, k, v)


def _subtree_size(params, path: str) -> int:
    node = params
    for key in path.split("/") if path else []:
        if not isinstance(node, dict) or key not in node:
            return 0
        node = node[key]
    return sum(math.prod(p.shape) for p in jax.tree.leaves(node))


def _plain(v):
    """JSON-friendly: tuples to lists, integral floats to ints."""
    if isinstance(v, (tuple, list)):
        return [_plain(x) for x in v]
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v
