// An identity that XLA cannot see through: the custom call `cnnjax_materialize`.
//
// XLA:CPU's fusion duplicates cheap elementwise producers (BatchNorm normalisation, residual
// adds, ReLU) into each consumer. The transposes that feed the weight-gradient convolutions
// of a training step are such consumers, so without a barrier they recompute the whole
// residual stream before every convolution (cnnjax/runtime/materialize.py, BENCHMARKS.md).
// An opaque custom call's result can only be read from memory: putting one on each
// convolution input (and on the gradient arriving at its output) makes XLA materialise the
// tensor once. The output aliases the input (input_output_aliases={0: 0}), so when XLA can
// donate the buffer this handler does nothing; otherwise it copies.
#include <cstring>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

static ffi::Error Materialize(ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> y) {
  if (x.untyped_data() != y->untyped_data()) {
    std::memcpy(y->untyped_data(), x.untyped_data(), x.size_bytes());
  }
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnjaxMaterialize, Materialize,
                              ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>());
