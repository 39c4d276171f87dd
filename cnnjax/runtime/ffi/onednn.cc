// 2-D convolutions on CPU through oneDNN: the XLA FFI custom calls `cnnjax_onednn_conv_fwd`,
// `cnnjax_onednn_conv_bwd_data` and `cnnjax_onednn_conv_bwd_weights`.
//
// XLA:CPU computes a convolution's weight gradient as a convolution over the batch, so every
// training step transposes each layer's input and output gradient from NHWC into the layout
// its Eigen kernel wants (BENCHMARKS.md, "CPU: oneDNN convolutions"): those transposes are the
// largest item of a CIFAR ResNet's CPU profile. oneDNN (the library PyTorch's CPU
// convolutions run on) has forward, backward-data and backward-weights kernels that read
// NHWC activations directly. Activations stay NHWC; kernels are flax's HWIO
// ([KH, KW, Ci/G, Co], output channel o of group g at g * Co/G + o) and are reordered into
// the layout oneDNN's kernel picks. float32 only; the Python side (cnnjax/ops/onednn.py)
// sends everything else to XLA.
//
// Attributes: sh, sw (strides), pt, pb, pl, pr (explicit zero padding: top, bottom, left,
// right), dh, dw (kernel dilation, 1 = none), groups. Primitives are built once per shape
// and cached; they run with a scratchpad of this call's own, so XLA may run several at once.
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using dims = dnnl::memory::dims;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

struct Geometry {
  int64_t n, h, w, ci, ho, wo, co, kh, kw;
  int64_t sh, sw, pt, pb, pl, pr, dh, dw, groups;

  std::string key(const char* kind) const {
    std::ostringstream s;
    s << kind;
    for (int64_t v : {n, h, w, ci, ho, wo, co, kh, kw, sh, sw, pt, pb, pl, pr, dh, dw, groups})
      s << ',' << v;
    return s.str();
  }
  dnnl::memory::desc src() const { return {{n, ci, h, w}, dt::f32, tag::nhwc}; }
  dnnl::memory::desc dst() const { return {{n, co, ho, wo}, dt::f32, tag::nhwc}; }
  dims weight_dims() const {
    if (groups == 1) return {co, ci, kh, kw};
    return {groups, co / groups, ci / groups, kh, kw};
  }
  // Flax's HWIO kernel as oneDNN sees it.
  dnnl::memory::desc user_weights() const {
    return {weight_dims(), dt::f32, groups == 1 ? tag::hwio : tag::hwigo};
  }
  dnnl::memory::desc any_weights() const { return {weight_dims(), dt::f32, tag::any}; }
  dims strides() const { return {sh, sw}; }
  dims dilates() const { return {dh - 1, dw - 1}; }  // oneDNN counts the inserted zeros
  dims pad_l() const { return {pt, pl}; }
  dims pad_r() const { return {pb, pr}; }
};

dnnl::engine& engine() {
  static dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  return eng;
}

dnnl::primitive_attr user_scratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

dnnl::convolution_forward::primitive_desc forward_pd(const Geometry& g) {
  return dnnl::convolution_forward::primitive_desc(
      engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, g.src(),
      g.any_weights(), g.dst(), g.strides(), g.dilates(), g.pad_l(), g.pad_r(),
      user_scratchpad());
}

// One cached convolution: the primitive, the layout its kernel wants the weights in, and the
// reorder between that layout and flax's (empty when they are the same).
struct Plan {
  dnnl::primitive conv;
  dnnl::memory::desc weights;  // the kernel's weight layout
  dnnl::memory::desc scratch;
  dnnl::reorder reorder;       // user -> kernel (fwd, bwd data) or kernel -> user (bwd weights)
  bool needs_reorder = false;
  dnnl::memory::desc reorder_scratch;
};

enum class Kind { kForward, kBackwardData, kBackwardWeights };

std::unique_ptr<Plan> make_plan(Kind kind, const Geometry& g) {
  auto plan = std::make_unique<Plan>();
  auto fwd = forward_pd(g);
  dnnl::memory::desc user = g.user_weights();
  if (kind == Kind::kForward) {
    plan->conv = dnnl::convolution_forward(fwd);
    plan->weights = fwd.weights_desc();
    plan->scratch = fwd.scratchpad_desc();
  } else if (kind == Kind::kBackwardData) {
    auto pd = dnnl::convolution_backward_data::primitive_desc(
        engine(), dnnl::algorithm::convolution_direct, g.src(), g.any_weights(), g.dst(),
        g.strides(), g.dilates(), g.pad_l(), g.pad_r(), fwd, user_scratchpad());
    plan->conv = dnnl::convolution_backward_data(pd);
    plan->weights = pd.weights_desc();
    plan->scratch = pd.scratchpad_desc();
  } else {
    auto pd = dnnl::convolution_backward_weights::primitive_desc(
        engine(), dnnl::algorithm::convolution_direct, g.src(), g.any_weights(), g.dst(),
        g.strides(), g.dilates(), g.pad_l(), g.pad_r(), fwd, user_scratchpad());
    plan->conv = dnnl::convolution_backward_weights(pd);
    plan->weights = pd.diff_weights_desc();
    plan->scratch = pd.scratchpad_desc();
  }
  plan->needs_reorder = plan->weights != user;
  if (plan->needs_reorder) {
    auto from = kind == Kind::kBackwardWeights ? plan->weights : user;
    auto to = kind == Kind::kBackwardWeights ? user : plan->weights;
    auto rpd = dnnl::reorder::primitive_desc(engine(), from, engine(), to, user_scratchpad());
    plan->reorder = dnnl::reorder(rpd);
    plan->reorder_scratch = rpd.scratchpad_desc();
  }
  return plan;
}

const Plan& plan_for(Kind kind, const Geometry& g) {
  static std::mutex mu;
  static std::unordered_map<std::string, std::unique_ptr<Plan>> cache;
  const char* names[] = {"fwd", "bwd_data", "bwd_weights"};
  std::string key = g.key(names[static_cast<int>(kind)]);
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(key);
  if (it == cache.end()) it = cache.emplace(key, make_plan(kind, g)).first;
  return *it->second;
}

// A buffer for oneDNN to work in, 64-byte aligned, kept per thread and grown on demand:
// a fresh allocation per call would page-fault its whole size in again every time.
class Scratch {
 public:
  void* get(size_t size) {
    if (size > capacity_) {
      data_.reset(new uint8_t[size + 64]);  // default-initialised: no memset
      capacity_ = size;
    }
    auto p = reinterpret_cast<uintptr_t>(data_.get());
    return reinterpret_cast<void*>((p + 63) & ~uintptr_t(63));
  }

 private:
  std::unique_ptr<uint8_t[]> data_;
  size_t capacity_ = 0;
};

ffi::Error run(Kind kind, const Geometry& g, float* src, float* weights, float* dst) {
  try {
    const Plan& plan = plan_for(kind, g);
    dnnl::engine& eng = engine();
    thread_local dnnl::stream stream(eng);
    thread_local Scratch conv_scratch, reorder_scratch, kernel_weights;
    dnnl::memory src_m(g.src(), eng, src), dst_m(g.dst(), eng, dst);
    dnnl::memory user_w(g.user_weights(), eng, weights);
    dnnl::memory conv_w = user_w;
    if (plan.needs_reorder) {
      conv_w = dnnl::memory(plan.weights, eng, kernel_weights.get(plan.weights.get_size()));
    }
    dnnl::memory scratch(plan.scratch, eng, conv_scratch.get(plan.scratch.get_size()));
    auto reorder = [&](dnnl::memory& from, dnnl::memory& to) {
      dnnl::memory rs(plan.reorder_scratch, eng,
                      reorder_scratch.get(plan.reorder_scratch.get_size()));
      plan.reorder.execute(stream, {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to},
                                    {DNNL_ARG_SCRATCHPAD, rs}});
    };
    if (kind == Kind::kForward) {
      if (plan.needs_reorder) reorder(user_w, conv_w);
      plan.conv.execute(stream, {{DNNL_ARG_SRC, src_m}, {DNNL_ARG_WEIGHTS, conv_w},
                                 {DNNL_ARG_DST, dst_m}, {DNNL_ARG_SCRATCHPAD, scratch}});
    } else if (kind == Kind::kBackwardData) {
      if (plan.needs_reorder) reorder(user_w, conv_w);
      plan.conv.execute(stream, {{DNNL_ARG_DIFF_DST, dst_m}, {DNNL_ARG_WEIGHTS, conv_w},
                                 {DNNL_ARG_DIFF_SRC, src_m}, {DNNL_ARG_SCRATCHPAD, scratch}});
    } else {
      plan.conv.execute(stream, {{DNNL_ARG_SRC, src_m}, {DNNL_ARG_DIFF_DST, dst_m},
                                 {DNNL_ARG_DIFF_WEIGHTS, conv_w},
                                 {DNNL_ARG_SCRATCHPAD, scratch}});
      if (plan.needs_reorder) reorder(conv_w, user_w);
    }
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal,
                      std::string("oneDNN convolution ") + g.key("") + ": " + e.what());
  }
  return ffi::Error::Success();
}

using F32 = ffi::Buffer<ffi::F32>;

// Fills the geometry from the activations (NHWC, either side) and the kernel (HWIO) shapes.
ffi::Error geometry(ffi::Span<const int64_t> x, ffi::Span<const int64_t> y,
                    ffi::Span<const int64_t> w, int64_t sh, int64_t sw, int64_t pt, int64_t pb,
                    int64_t pl, int64_t pr, int64_t dh, int64_t dw, int64_t groups, Geometry* g) {
  if (x.size() != 4 || y.size() != 4 || w.size() != 4)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "expected 4-D NHWC / HWIO arrays");
  *g = {x[0], x[1], x[2], x[3], y[1], y[2], y[3], w[0], w[1],
        sh,   sw,   pt,   pb,   pl,   pr,   dh,   dw,   groups};
  if (groups < 1 || g->ci % groups || g->co % groups || w[2] * groups != g->ci || w[3] != g->co)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "kernel does not match the channels");
  return ffi::Error::Success();
}

ffi::Error Forward(F32 x, F32 w, ffi::Result<F32> y, int64_t sh, int64_t sw, int64_t pt,
                   int64_t pb, int64_t pl, int64_t pr, int64_t dh, int64_t dw, int64_t groups) {
  Geometry g;
  auto err = geometry(x.dimensions(), y->dimensions(), w.dimensions(), sh, sw, pt, pb, pl, pr,
                      dh, dw, groups, &g);
  if (!err.success()) return err;
  return run(Kind::kForward, g, x.typed_data(), w.typed_data(), y->typed_data());
}

ffi::Error BackwardData(F32 dy, F32 w, ffi::Result<F32> dx, int64_t sh, int64_t sw, int64_t pt,
                        int64_t pb, int64_t pl, int64_t pr, int64_t dh, int64_t dw,
                        int64_t groups) {
  Geometry g;
  auto err = geometry(dx->dimensions(), dy.dimensions(), w.dimensions(), sh, sw, pt, pb, pl, pr,
                      dh, dw, groups, &g);
  if (!err.success()) return err;
  return run(Kind::kBackwardData, g, dx->typed_data(), w.typed_data(), dy.typed_data());
}

ffi::Error BackwardWeights(F32 x, F32 dy, ffi::Result<F32> dw_out, int64_t sh, int64_t sw,
                           int64_t pt, int64_t pb, int64_t pl, int64_t pr, int64_t dh,
                           int64_t dw, int64_t groups) {
  Geometry g;
  auto err = geometry(x.dimensions(), dy.dimensions(), dw_out->dimensions(), sh, sw, pt, pb, pl,
                      pr, dh, dw, groups, &g);
  if (!err.success()) return err;
  return run(Kind::kBackwardWeights, g, x.typed_data(), dw_out->typed_data(), dy.typed_data());
}

}  // namespace

// ---- batch normalisation (training) ------------------------------------------------------
// `cnnjax_onednn_bn_fwd`: x [N, H, W, C], scale [C], shift [C] -> y, batch mean [C], batch
// variance [C] (divided by N*H*W, as flax's). `cnnjax_onednn_bn_bwd`: x, dy, mean, variance,
// scale -> dx, dscale, dshift. Attribute: epsilon. oneDNN's kernels read NHWC in one pass for
// the statistics and one for the output (two for the gradients), where XLA:CPU materialises
// intermediate tensors for each of its reductions.

namespace {

struct BnGeometry {
  int64_t n, h, w, c;
  float eps;
  std::string key(const char* kind) const {
    std::ostringstream s;
    s << kind << ',' << n << ',' << h << ',' << w << ',' << c << ',' << eps;
    return s.str();
  }
  dnnl::memory::desc data() const { return {{n, c, h, w}, dt::f32, tag::nhwc}; }
  dnnl::memory::desc vec() const { return {{c}, dt::f32, tag::a}; }
};

const dnnl::normalization_flags kBnFlags =
    dnnl::normalization_flags::use_scale | dnnl::normalization_flags::use_shift;

dnnl::batch_normalization_forward::primitive_desc bn_forward_pd(const BnGeometry& g) {
  return dnnl::batch_normalization_forward::primitive_desc(
      engine(), dnnl::prop_kind::forward_training, g.data(), g.data(), g.eps, kBnFlags,
      user_scratchpad());
}

struct BnPlan {
  dnnl::primitive bn;
  dnnl::memory::desc scratch;
};

const BnPlan& bn_plan_for(bool backward, const BnGeometry& g) {
  static std::mutex mu;
  static std::unordered_map<std::string, std::unique_ptr<BnPlan>> cache;
  std::string key = g.key(backward ? "bn_bwd" : "bn_fwd");
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(key);
  if (it == cache.end()) {
    auto plan = std::make_unique<BnPlan>();
    auto fwd = bn_forward_pd(g);
    if (backward) {
      auto pd = dnnl::batch_normalization_backward::primitive_desc(
          engine(), dnnl::prop_kind::backward, g.data(), g.data(), g.data(), g.eps, kBnFlags,
          fwd, user_scratchpad());
      plan->bn = dnnl::batch_normalization_backward(pd);
      plan->scratch = pd.scratchpad_desc();
    } else {
      plan->bn = dnnl::batch_normalization_forward(fwd);
      plan->scratch = fwd.scratchpad_desc();
    }
    it = cache.emplace(key, std::move(plan)).first;
  }
  return *it->second;
}

ffi::Error bn_geometry(ffi::Span<const int64_t> x, float eps, BnGeometry* g) {
  if (x.size() != 4)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "expected a 4-D NHWC array");
  *g = {x[0], x[1], x[2], x[3], eps};
  return ffi::Error::Success();
}

// Runs the cached forward or backward primitive on the given buffers: `data` args are
// [N, H, W, C] arrays, `vecs` per-channel [C] ones.
ffi::Error run_bn(bool backward, const BnGeometry& g,
                  std::initializer_list<std::pair<int, void*>> data,
                  std::initializer_list<std::pair<int, void*>> vecs) {
  try {
    const BnPlan& plan = bn_plan_for(backward, g);
    dnnl::engine& eng = engine();
    thread_local dnnl::stream stream(eng);
    thread_local Scratch scratch_buffer;
    std::unordered_map<int, dnnl::memory> args;
    for (auto [arg, ptr] : data) args.emplace(arg, dnnl::memory(g.data(), eng, ptr));
    for (auto [arg, ptr] : vecs) args.emplace(arg, dnnl::memory(g.vec(), eng, ptr));
    args.emplace(DNNL_ARG_SCRATCHPAD,
                 dnnl::memory(plan.scratch, eng, scratch_buffer.get(plan.scratch.get_size())));
    plan.bn.execute(stream, args);
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN batch norm ") +
                                                     g.key(backward ? "bwd" : "fwd") + ": " +
                                                     e.what());
  }
  return ffi::Error::Success();
}

ffi::Error BnForward(F32 x, F32 scale, F32 shift, ffi::Result<F32> y, ffi::Result<F32> mean,
                     ffi::Result<F32> var, float eps) {
  BnGeometry g;
  auto err = bn_geometry(x.dimensions(), eps, &g);
  if (!err.success()) return err;
  return run_bn(false, g, {{DNNL_ARG_SRC, x.typed_data()}, {DNNL_ARG_DST, y->typed_data()}},
                {{DNNL_ARG_SCALE, scale.typed_data()},
                 {DNNL_ARG_SHIFT, shift.typed_data()},
                 {DNNL_ARG_MEAN, mean->typed_data()},
                 {DNNL_ARG_VARIANCE, var->typed_data()}});
}

ffi::Error BnBackward(F32 x, F32 dy, F32 mean, F32 var, F32 scale, ffi::Result<F32> dx,
                      ffi::Result<F32> dscale, ffi::Result<F32> dshift, float eps) {
  BnGeometry g;
  auto err = bn_geometry(x.dimensions(), eps, &g);
  if (!err.success()) return err;
  return run_bn(true, g,
                {{DNNL_ARG_SRC, x.typed_data()},
                 {DNNL_ARG_DIFF_DST, dy.typed_data()},
                 {DNNL_ARG_DIFF_SRC, dx->typed_data()}},
                {{DNNL_ARG_MEAN, mean.typed_data()},
                 {DNNL_ARG_VARIANCE, var.typed_data()},
                 {DNNL_ARG_SCALE, scale.typed_data()},
                 {DNNL_ARG_DIFF_SCALE, dscale->typed_data()},
                 {DNNL_ARG_DIFF_SHIFT, dshift->typed_data()}});
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnjaxOnednnBnFwd, BnForward,
                              ffi::Ffi::Bind()
                                  .Arg<F32>()
                                  .Arg<F32>()
                                  .Arg<F32>()
                                  .Ret<F32>()
                                  .Ret<F32>()
                                  .Ret<F32>()
                                  .Attr<float>("eps"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnjaxOnednnBnBwd, BnBackward,
                              ffi::Ffi::Bind()
                                  .Arg<F32>()
                                  .Arg<F32>()
                                  .Arg<F32>()
                                  .Arg<F32>()
                                  .Arg<F32>()
                                  .Ret<F32>()
                                  .Ret<F32>()
                                  .Ret<F32>()
                                  .Attr<float>("eps"));

#define CNNJAX_CONV_ATTRS                                                                     \
  .Attr<int64_t>("sh").Attr<int64_t>("sw").Attr<int64_t>("pt").Attr<int64_t>("pb")            \
      .Attr<int64_t>("pl").Attr<int64_t>("pr").Attr<int64_t>("dh").Attr<int64_t>("dw")        \
      .Attr<int64_t>("groups")

XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnjaxOnednnConvFwd, Forward,
                              ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Ret<F32>()
                                  CNNJAX_CONV_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnjaxOnednnConvBwdData, BackwardData,
                              ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Ret<F32>()
                                  CNNJAX_CONV_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnjaxOnednnConvBwdWeights, BackwardWeights,
                              ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Ret<F32>()
                                  CNNJAX_CONV_ATTRS);
