"""Identities XLA cannot fuse through: stop XLA:CPU recomputing activations in the backward pass.

XLA:CPU's instruction fusion duplicates cheap elementwise producers into every consumer. In
a training step the consumers include the NHWC -> CHWN transposes that feed each
weight-gradient convolution, so each of those transposes recomputes the BatchNorm
normalisations, residual adds and ReLUs before it; the chains grow with depth (BENCHMARKS.md:
"CPU: the recompute barrier"). `lax.optimization_barrier` does not stop this (XLA removes it
before fusion). What does is an opaque op: `materialize(x)` is the XLA FFI custom call
`cnnjax_materialize` (cnnjax/runtime/ffi/materialize.cc, a no-op whose output aliases its
input, a copy when XLA cannot donate the buffer), so the tensor is computed once, written to
memory and read from there by every consumer.

    y = materialize(x)             # forward: identity; differentiates as the identity
    y = materialize_cotangent(y)   # forward: identity; the gradient arriving at y is
                                   # materialised before it flows on
    conv_fn = materialized_conv(lax.conv_general_dilated)   # both, around one convolution

The handler is C++ compiled on first use with the machine's C++ compiler against the FFI
headers jaxlib ships (`jax.ffi.include_dir()`), cached per jaxlib version and source hash
under $CNNJAX_FFI_DIR (default ~/.cache/cnnjax/ffi); `./launch.sh` builds it at set-up.
`available()` says whether it can be used and, if not, why. The op is registered for the CPU
platform only; sharded inputs keep their sharding (custom_partitioning), `vmap` maps it
elementwise.
"""

import functools
import string

import jax

from cnnjax.runtime import ffi_build
from cnnjax.runtime.ffi_build import FFI_DIR_ENV, Unavailable  # noqa: F401  (re-exported)

TARGET = "cnnjax_materialize"
SOURCE = ffi_build.FFI_SOURCES / "materialize.cc"
LIBRARY = ffi_build.Library(SOURCE, "cnnjax_materialize", ((TARGET, "CnnjaxMaterialize"),))


def library_path():
    """Where the compiled handler lives: one file per jaxlib version and source."""
    return LIBRARY.path()


def build(force: bool = False):
    """Compiles the handler if it is not there yet and returns its path."""
    return LIBRARY.build(force)


def _status() -> tuple[bool, str]:
    return ffi_build.status(LIBRARY)


def available() -> tuple[bool, str]:
    """(True, '') when the custom call is registered; (False, why not) otherwise."""
    return _status()


def _ffi(x):
    return jax.ffi.ffi_call(
        TARGET, jax.ShapeDtypeStruct(x.shape, x.dtype), input_output_aliases={0: 0}
    )(x)


@functools.cache
def _partitioned(ndim: int):
    """The custom call as an elementwise op for XLA's partitioner: each shard materialises its
    own rows (without this an opaque custom call would be all-gathered onto every device)."""
    from jax.experimental.custom_partitioning import custom_partitioning

    letters = " ".join(string.ascii_lowercase[:ndim]) if ndim else ""
    call = custom_partitioning(_ffi)
    call.def_partition(
        partition=lambda mesh, args, result: (mesh, _ffi, args[0].sharding, (args[0].sharding,)),
        infer_sharding_from_operands=lambda mesh, args, result: args[0].sharding,
        sharding_rule=f"{letters} -> {letters}",
    )
    return call


@jax.custom_batching.custom_vmap
def _materialize_op(x):
    ok, why = _status()  # one build attempt per process, not one per trace
    if not ok:
        raise Unavailable(why)
    return _partitioned(x.ndim)(x)


@_materialize_op.def_vmap
def _materialize_vmap(axis_size, in_batched, x):
    del axis_size
    return _partitioned(x.ndim)(x), in_batched[0]


@jax.custom_jvp
def materialize(x):
    """x -> x, computed once and read from memory by every consumer (a fusion barrier).

    Any shape and dtype. Differentiates as the identity (the tangent passes through), so
    forward and reverse mode both work. Raises `Unavailable` when the custom call cannot be
    built here; check `available()` first.
    """
    return _materialize_op(x)


@materialize.defjvp
def _materialize_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    return materialize(x), t


@jax.custom_vjp
def materialize_cotangent(y):
    """y -> y; the cotangent arriving at y is materialised (computed once, e.g. BatchNorm's
    backward feeding both gradient convolutions of the layer before it). Reverse mode only."""
    return y


materialize_cotangent.defvjp(lambda y: (y, None), lambda _, g: (materialize(g),))


def materialized_conv(conv_general_dilated):
    """A `conv_general_dilated`-compatible function (for `nn.Conv(conv_general_dilated=...)`)
    that materialises the convolution's input and the gradient at its output; values and
    gradients are the wrapped function's.

    Grouped and depthwise convolutions (feature_group_count > 1) are left as they are: with
    the barrier on them too EfficientNet-B0 trained 0.91x as fast as without any barrier,
    with it on the other convolutions only 1.05x (BENCHMARKS.md, "CPU: the recompute
    barrier"). Which model families get it at all is decided in cnnjax/models/rewrite.py.
    """

    @functools.wraps(conv_general_dilated)
    def conv(lhs, rhs, *args, **kwargs):
        # lax.conv_general_dilated's order: window_strides, padding, lhs_dilation,
        # rhs_dilation, dimension_numbers, feature_group_count, batch_group_count, ...
        groups = args[5] if len(args) > 5 else kwargs.get("feature_group_count", 1)
        batch_groups = args[6] if len(args) > 6 else kwargs.get("batch_group_count", 1)
        if groups != 1 or batch_groups != 1:
            return conv_general_dilated(lhs, rhs, *args, **kwargs)
        return materialize_cotangent(conv_general_dilated(materialize(lhs), rhs, *args, **kwargs))

    conv.materialized = True
    return conv


def main(argv=None) -> int:
    """`python -m cnnjax.runtime.materialize`: builds the handler and prints its path (the
    set-up step); exit 1 with the reason when it cannot be built."""
    try:
        print(build())
    except Unavailable as e:
        print(f"cnnjax: the XLA recompute barrier is unavailable: {e}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
