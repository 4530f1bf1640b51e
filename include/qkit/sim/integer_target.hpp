// qkit/sim/integer_target.hpp — QuantSim's simulation modes, and the integer program of the
// target-exact one: the model as ONNX Runtime's CPU provider runs qkit's exported QDQ model at
// its default optimization level, where the QuantizeLinear/DequantizeLinear pairs are fused
// into integer kernels (QLinearConv, QGemm, QLinearAdd, QLinearGlobalAveragePool).
//
// The program is compiled from the simulation's dataflow and encodings (weights quantized by
// the same kernels the exporter stores them with) and computes, op by op, what those kernels
// compute: uint8 activations, int8 weights, int32 accumulation, an int32 bias quantized with
// scale s_x·s_w, and requantization to the output grid with a float multiplier and
// round-half-to-even (docs/quantsim.md "Integer target" gives the rules and their sources in
// ONNX Runtime). What the runtime would not fuse, or a precision whose integer arithmetic is
// not the one simulated here, is refused with an error naming the layer: the mode never
// approximates silently.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <map>
#include <set>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "../error.hpp"
#include "../nn/activation.hpp"
#include "../nn/add.hpp"
#include "../nn/conv2d.hpp"
#include "../nn/dataflow.hpp"
#include "../nn/flatten.hpp"
#include "../nn/linear.hpp"
#include "../nn/pooling.hpp"
#include "../quant/encoding.hpp"
#include "../quant/qdq.hpp"
#include "../tensor/integer.hpp"
#include "../tensor/thread_pool.hpp"

namespace qkit {

/// How QuantSim computes (its last template parameter).
namespace sim_mode {

/// Every quantizer rounds in float (quantize-dequantize) and every op computes in float:
/// AIMET's simulation, and what ONNX Runtime computes with its graph optimizations disabled.
struct float_qdq {
  static constexpr bool integer_target = false;
  static constexpr const char* name = "float QDQ";
};

/// ONNX Runtime's CPU execution provider at its default optimization level running the model
/// qkit exports: fused integer kernels with MLAS's arithmetic. Inference only.
struct onnxruntime_cpu {
  static constexpr bool integer_target = true;
  static constexpr const char* name = "ONNX Runtime CPU (integer kernels)";
};

}  // namespace sim_mode

namespace integer {

/// A uint8 grid as the target stores it: real = scale · (q − zero_point).
struct grid {
  float scale = 1.0f;
  std::int32_t zero_point = 0;
};

/// A uint8 activation of the program: [N, C, H, W] or [N, F].
struct value {
  std::vector<std::uint8_t> data;
  shape_type shape;
  grid g;
};

/// QLinearConv / QGemm: integer inputs, int32 accumulators, requantized per output channel.
struct weighted_step {
  std::string name;
  bool is_linear = false, depthwise = false;
  conv2d_shape shape;                    ///< N set per run; for linear, C = in features
  std::vector<packed_weights> groups;    ///< one per group (GEMM path)
  std::vector<std::int32_t> dw_weights;  ///< depthwise path: [C, KH, KW], w − z_w
  std::vector<std::int32_t> bias;        ///< per output channel, the zero points' constant terms folded in
  std::vector<std::int32_t> w_zero_point;  ///< per output channel (int8 storage)
  bool has_w_zero_point = false;
  std::vector<float> multiplier;         ///< per output channel: s_x·s_w / s_y in float
  grid in, out;
};

/// QLinearAdd of two same-shaped uint8 tensors.
struct add_step {
  std::string name;
  grid a, b, out;
  float ra = 1.0f, rb = 1.0f, fixed = 0.0f;  ///< set by qlinear_add_parameters
};

/// QLinearGlobalAveragePool: int32 sum of each channel's plane, requantized.
struct gap_step {
  std::string name;
  grid in, out;
};

/// A value whose grid changes without arithmetic (Flatten between two quantizers): ONNX
/// Runtime drops the DQ/Q pair when both grids are equal (a pure reshape), else it runs
/// DequantizeLinear → QuantizeLinear in float.
struct reshape_step {
  std::string name;
  std::size_t axis = 1;
  bool same_grid = true;
  grid in, out;
};

struct step {
  enum class kind { weighted, add, gap, reshape } k;
  std::size_t index = 0;               ///< into the vector of its kind
  std::vector<std::size_t> inputs;     ///< value slots
  std::size_t output = 0;
};

// ---- the arithmetic of each op, one element at a time (the definition; the loops below call
// these or SIMD versions doing the same IEEE operations) ---------------------------------------

/// ONNX QuantizeLinear to uint8 (MLAS): round_half_even(x / scale) + zero_point, saturated.
inline std::uint8_t quantize_linear(float x, const grid& g) {
  float v = std::nearbyint(x / g.scale) + static_cast<float>(g.zero_point);
  v = std::min(std::max(v, 0.0f), 255.0f);
  return static_cast<std::uint8_t>(v);
}

/// ONNX DequantizeLinear from uint8: (q − zero_point) · scale.
inline float dequantize_linear(std::uint8_t q, const grid& g) {
  return static_cast<float>(std::int32_t(q) - g.zero_point) * g.scale;
}

/// MLAS's QLinearAdd on x86-64 with AVX2 (MlasQLinearAddKernelAvx2Helper, the kernel ORT's
/// CPU provider runs wherever AVX2 exists): with the ratios r_a = s_a/s_c, r_b = s_b/s_c and
/// the constant F = z_c − fma(r_a, z_a, r_b·z_b), each output is
/// round_half_even(fma(a, r_a, fma(b, r_b, F))) saturated to [0, 255], a and b the raw
/// uint8 values. Read in ONNX Runtime's source and confirmed on all 65,536 (a, b) pairs for
/// 14 grid triples against ONNX Runtime 1.30 (docs/quantsim.md "Integer target"); the
/// textbook (s_a(a − z_a) + s_b(b − z_b)) / s_c differs in up to 2 of them.
inline void qlinear_add_parameters(add_step& p) {
  const grid &ga = p.a, &gb = p.b, &gc = p.out;
  p.ra = ga.scale / gc.scale;
  p.rb = gb.scale / gc.scale;
  // std::fma, and the product rounded on its own, whatever the user's -ffp-contract.
  const float rb_zb = qkit::detail::rounded(p.rb * static_cast<float>(gb.zero_point));
  p.fixed = static_cast<float>(gc.zero_point) - std::fma(p.ra, static_cast<float>(ga.zero_point), rb_zb);
}

inline std::uint8_t qlinear_add(std::uint8_t a, std::uint8_t b, const add_step& p) {
  const float r = std::fma(static_cast<float>(a), p.ra, std::fma(static_cast<float>(b), p.rb, p.fixed));
  // vcvtps2dq then saturating packs to int16 and uint8: clamping the rounded value to
  // [0, 255] is the same for every |r| < 2^31, which compile() guarantees.
  const float q = std::nearbyint(r);
  return static_cast<std::uint8_t>(std::min(std::max(q, 0.0f), 255.0f));
}

/// The compiled program; run() is const and thread-safe.
class program {
 public:
  std::vector<weighted_step> weighted;
  std::vector<add_step> adds;
  std::vector<gap_step> gaps;
  std::vector<reshape_step> reshapes;
  std::vector<step> steps;
  std::size_t slots = 0;
  std::size_t output_slot = 0;
  grid input, output;
  shape_type input_shape;  ///< of one sample (without the batch dimension)

  tensor run(const tensor& x) const {
    QKIT_PRECONDITION(x.dimension() == input_shape.size() + 1, shape_error,
                      "integer simulation: input of shape ", shape_string(x.shape()),
                      ", expected [N, ", shape_string(input_shape).substr(1));
    for (std::size_t i = 0; i < input_shape.size(); ++i)
      QKIT_PRECONDITION(x.shape(i + 1) == input_shape[i], shape_error,
                        "integer simulation: input of shape ", shape_string(x.shape()),
                        ", expected [N, ", shape_string(input_shape).substr(1));
    std::vector<value> v(slots);
    value& in = v[0];
    in.shape.assign(x.shape().begin(), x.shape().end());
    in.g = input;
    in.data.resize(x.size());
    {
      const float* src = x.data();
      std::uint8_t* dst = in.data.data();
      parallel_for(0, x.size(), std::size_t{1} << 14, [&](std::size_t b, std::size_t e) {
        for (std::size_t i = b; i < e; ++i) dst[i] = quantize_linear(src[i], input);
      });
    }
    for (const step& s : steps) {
      switch (s.k) {
        case step::kind::weighted: run_weighted(weighted[s.index], v[s.inputs[0]], v[s.output]); break;
        case step::kind::add: run_add(adds[s.index], v[s.inputs[0]], v[s.inputs[1]], v[s.output]); break;
        case step::kind::gap: run_gap(gaps[s.index], v[s.inputs[0]], v[s.output]); break;
        case step::kind::reshape: run_reshape(reshapes[s.index], v[s.inputs[0]], v[s.output]); break;
      }
    }
    const value& out = v[output_slot];
    tensor y = tensor::from_shape(out.shape);
    for (std::size_t i = 0; i < out.data.size(); ++i) y.data()[i] = dequantize_linear(out.data[i], output);
    return y;
  }

 private:
  // acc[o][n] −= z_w[o0 + o] · Σ_k b[k][n] for the M rows of one group.
  static void subtract_column_sums(const weighted_step& w, std::size_t o0, std::size_t M,
                                   const std::uint8_t* b, std::size_t K, std::size_t N,
                                   std::int32_t* acc) {
    std::vector<std::int32_t> sums(N, 0);
    for (std::size_t k = 0; k < K; ++k)
      for (std::size_t n = 0; n < N; ++n) sums[n] += b[k * N + n];
    for (std::size_t o = 0; o < M; ++o) {
      const std::int32_t z = w.w_zero_point[o0 + o];
      if (z == 0) continue;
      for (std::size_t n = 0; n < N; ++n) acc[o * N + n] -= z * sums[n];
    }
  }

  static void run_weighted(const weighted_step& w, const value& x, value& y) {
    const std::size_t N = x.shape.at(0);
    if (w.is_linear) {
      const std::size_t F = w.shape.C, O = w.shape.O;
      QKIT_PRECONDITION(x.shape.size() == 2 && x.shape[1] == F, shape_error, "integer simulation: '",
                        w.name, "' expects [N, ", F, "], got ", shape_string(x.shape));
      // c[O][N] = W[O][F] · xᵀ[F][N]: the batch is the GEMM's wide dimension.
      std::vector<std::uint8_t> xt(F * N);
      for (std::size_t n = 0; n < N; ++n)
        for (std::size_t f = 0; f < F; ++f) xt[f * N + n] = x.data[n * F + f];
      std::vector<std::int32_t> acc(O * N);
      gemm_s8u8(w.groups[0], N, xt.data(), N, acc.data(), N);
      if (w.has_w_zero_point) subtract_column_sums(w, 0, O, xt.data(), F, N, acc.data());
      y.shape = {N, O};
      y.g = w.out;
      y.data.resize(N * O);
      for (std::size_t o = 0; o < O; ++o)
        for (std::size_t n = 0; n < N; ++n)
          y.data[n * O + o] = requantize_one(acc[o * N + n] + w.bias[o], w.multiplier[o], w.out.zero_point);
      return;
    }
    conv2d_shape s = w.shape;
    QKIT_PRECONDITION(x.shape.size() == 4 && x.shape[1] == s.C, shape_error,
                      "integer simulation: '", w.name, "' expects [N, ", s.C, ", H, W], got ",
                      shape_string(x.shape));
    s.N = N;
    s.H = x.shape[2];
    s.W = x.shape[3];
    s.validate();
    const std::size_t OH = s.OH(), OW = s.OW(), P = OH * OW, O = s.O;
    y.shape = {N, O, OH, OW};
    y.g = w.out;
    y.data.resize(N * O * P);
    const std::size_t in_image = s.C * s.H * s.W;
    parallel_for(0, N, 1, [&](std::size_t b, std::size_t e) {
      std::vector<std::int32_t> acc(O * P);
      std::vector<std::uint8_t> col;
      for (std::size_t n = b; n < e; ++n) {
        const std::uint8_t* xi = x.data.data() + n * in_image;
        if (w.depthwise) {
          depthwise_u8(s, xi, w.in.zero_point, w.dw_weights.data(), acc.data());
        } else {
          const std::size_t G = s.p.groups, Cg = s.C / G, Og = O / G;
          const bool pointwise = s.KH == 1 && s.KW == 1 && s.p.stride_h == 1 && s.p.stride_w == 1 &&
                                 s.p.pad_top + s.p.pad_left + s.p.pad_bottom + s.p.pad_right == 0;
          const std::size_t K = Cg * s.KH * s.KW;
          if (!pointwise) col.resize(K * P);
          for (std::size_t g = 0; g < G; ++g) {
            const std::uint8_t* xg = xi + g * Cg * s.H * s.W;
            const std::uint8_t* bmat = xg;
            if (!pointwise) {
              // Padding holds the input's zero point: real zero, as the target pads.
              qkit::detail::im2col(s, Cg, xg, col.data(), P, static_cast<std::uint8_t>(w.in.zero_point));
              bmat = col.data();
            }
            gemm_s8u8(w.groups[g], P, bmat, P, acc.data() + g * Og * P, P);
            if (w.has_w_zero_point) subtract_column_sums(w, g * Og, Og, bmat, K, P, acc.data() + g * Og * P);
          }
        }
        std::uint8_t* yi = y.data.data() + n * O * P;
        for (std::size_t o = 0; o < O; ++o) {
          std::int32_t* a = acc.data() + o * P;
          const std::int32_t bias = w.bias[o];
          for (std::size_t i = 0; i < P; ++i) a[i] += bias;
          requantize(a, P, w.multiplier[o], w.out.zero_point, yi + o * P);
        }
      }
    });
  }

  static void run_add(const add_step& a, const value& x, const value& z, value& y) {
    QKIT_PRECONDITION(x.shape == z.shape, shape_error, "integer simulation: '", a.name,
                      "' adds ", shape_string(x.shape), " and ", shape_string(z.shape),
                      " (the integer mode adds equal shapes only)");
    y.shape = x.shape;
    y.g = a.out;
    y.data.resize(x.data.size());
    const std::uint8_t *p = x.data.data(), *q = z.data.data();
    std::uint8_t* o = y.data.data();
    parallel_for(0, y.data.size(), std::size_t{1} << 14, [&](std::size_t b, std::size_t e) {
      for (std::size_t i = b; i < e; ++i) o[i] = qlinear_add(p[i], q[i], a);
    });
  }

  static void run_gap(const gap_step& g, const value& x, value& y) {
    QKIT_PRECONDITION(x.shape.size() == 4, shape_error, "integer simulation: '", g.name,
                      "' expects [N, C, H, W], got ", shape_string(x.shape));
    const std::size_t N = x.shape[0], C = x.shape[1], HW = x.shape[2] * x.shape[3];
    y.shape = {N, C, 1, 1};
    y.g = g.out;
    y.data.resize(N * C);
    // MLAS: the int32 sum of the plane minus HW · zero point, requantized with
    // s_x / (s_y · HW) (qlgavgpool.cpp).
    const float mult = g.in.scale / (g.out.scale * static_cast<float>(HW));
    const std::int32_t bias = -g.in.zero_point * static_cast<std::int32_t>(HW);
    for (std::size_t i = 0; i < N * C; ++i) {
      std::int32_t sum = 0;
      const std::uint8_t* p = x.data.data() + i * HW;
      for (std::size_t k = 0; k < HW; ++k) sum += p[k];
      y.data[i] = requantize_one(sum + bias, mult, g.out.zero_point);
    }
  }

  static void run_reshape(const reshape_step& r, const value& x, value& y) {
    std::size_t outer = 1, inner = 1;
    for (std::size_t i = 0; i < x.shape.size(); ++i) (i < r.axis ? outer : inner) *= x.shape[i];
    y.shape = {outer, inner};
    y.g = r.out;
    if (r.same_grid) {
      y.data = x.data;
      return;
    }
    y.data.resize(x.data.size());
    for (std::size_t i = 0; i < x.data.size(); ++i)
      y.data[i] = quantize_linear(dequantize_linear(x.data[i], r.in), r.out);
  }
};

// ---- compiling a simulation into a program -------------------------------------------------

namespace detail {

[[noreturn]] inline void unsupported(const std::string& layer, const std::string& what) {
  QKIT_THROW(config_error, "integer target simulation (", sim_mode::onnxruntime_cpu::name,
             "): '", layer, "' ", what);
}

/// The simulated kernels take 8-bit integer activations (uint8 storage).
inline void check_activation_precision(const std::string& tensor, dtype t, int bitwidth) {
  if (t != dtype::integer)
    unsupported(tensor, "is float16; ONNX Runtime runs float16 QDQ in float (use the float mode)");
  if (bitwidth != 8)
    unsupported(tensor, "is a " + std::to_string(bitwidth) +
                            "-bit activation; the simulated integer kernels take uint8 activations "
                            "(ONNX Runtime runs 16-bit QDQ in float: use the float mode)");
}

/// The uint8 grid of an 8-bit activation encoding, or an error saying why it has none.
inline grid activation_grid(const std::string& tensor, const std::vector<encoding>& encs) {
  if (encs.size() != 1)
    unsupported(tensor, "has per-channel activation encodings; the target's integer kernels take "
                        "one scale and zero point per activation");
  const encoding& e = encs[0];
  check_activation_precision(tensor, e.dtype, e.bitwidth);
  const std::int64_t zp = e.zero_point_unsigned();
  if (zp < 0 || zp > 255)
    unsupported(tensor, "has zero point " + std::to_string(zp) + " (offset " +
                            std::to_string(e.offset) + "), outside uint8 storage [0, 255]");
  const float s = static_cast<float>(e.scale);
  if (!(std::isnormal(s) && s > 0.0f))
    unsupported(tensor, "has scale " + std::to_string(e.scale) +
                            ", which is not a positive normal float32");
  return grid{s, static_cast<std::int32_t>(zp)};
}

/// The requantization multiplier s_x·s_w / s_y, computed as the target computes it (float32,
/// in that order); refused when float cannot carry it.
inline float multiplier(const std::string& layer, float sx, float sw, float sy) {
  const float m = sx * sw / sy;
  if (!(std::isnormal(m) && m > 0.0f))
    unsupported(layer, "needs a requantization multiplier s_x·s_w/s_y = " + std::to_string(m) +
                           " that float32 cannot represent as a positive normal number");
  return m;
}

/// The int32 bias the target quantizes a float bias to: round(b / (s_x·s_w)), scale in float.
inline std::int32_t quantize_bias(const std::string& layer, float b, float sx, float sw) {
  const float bias_scale = sx * sw;
  const double q = std::nearbyint(static_cast<double>(b / bias_scale));
  if (!(std::fabs(q) < 2147483647.0))
    unsupported(layer, "has a bias " + std::to_string(b) + " that does not fit int32 at scale " +
                           std::to_string(bias_scale) + " (s_x·s_w)");
  return static_cast<std::int32_t>(q);
}

}  // namespace detail

/// Σ (x − z_x)(w − z_w) = Σ x·w − z_x·Σ w − z_w·Σ x + K·z_x·z_w: the GEMM multiplies the raw
/// integers (padding holds z_x), the terms that do not depend on the input go into the bias,
/// and z_w·Σ x is subtracted per column at run time (when some z_w is not zero).
inline void fold_zero_points(weighted_step& w, std::int32_t zx, std::size_t K) {
  const std::size_t Og = w.groups.front().M;
  for (std::size_t g = 0; g < w.groups.size(); ++g)
    for (std::size_t o = 0; o < Og; ++o) {
      const std::size_t oc = g * Og + o;
      w.bias[oc] += -zx * w.groups[g].row_sums[o] + static_cast<std::int32_t>(K) * zx * w.w_zero_point[oc];
    }
}

/// Whether a quantizer changes its tensor (enabled, not a 32-bit pass-through).
template <class Q>
bool quantizes(const Q& q) {
  return q.enabled() && !(q.settings().dtype == dtype::integer && q.bitwidth() >= 32);
}

/// Compiles `sim` (calibrated or with loaded encodings) into the integer program of
/// sim_mode::onnxruntime_cpu. Errors name the layer and what the target would not run in
/// integer arithmetic.
template <class Sim>
program compile(Sim& sim, bool structure_only = false) {
  using detail::unsupported;
  const nn::dataflow& flow = sim.dataflow();
  program prog;
  std::map<std::string, std::size_t> slot;  // tensor -> value slot
  std::map<std::string, grid> grids;
  prog.input_shape.assign(sim.input_shape().begin() + 1, sim.input_shape().end());

  auto act = [&](const std::string& tensor) -> const auto& { return sim.activation_quantizer(tensor); };
  auto quantized = [&](const std::string& tensor) {
    return sim.has_quantizer(tensor) && quantizes(act(tensor));
  };
  // With structure_only (at construction, before encodings exist) only the settings are
  // checked: the program of such a compile is discarded, so the default grid returned then is
  // never computed with.
  auto grid_of = [&](const std::string& tensor) {
    const auto& q = act(tensor);
    const quantizer_settings& st = q.settings();
    if (q.per_channel())
      unsupported(tensor, "has per-channel activation quantization; the target's integer kernels "
                          "take one scale and zero point per activation");
    detail::check_activation_precision(tensor, st.dtype, st.bitwidth);
    if (structure_only) return grid{};
    if (!q.has_encodings())
      QKIT_THROW(config_error, "integer target simulation: '", tensor,
                 "' has no encodings yet (compute or load encodings first)");
    return detail::activation_grid(tensor, q.encodings());
  };

  if (!quantized(flow.input))
    unsupported(flow.input, "(the model input) is not quantized; the target's first op is its "
                            "QuantizeLinear");
  prog.input = grid_of(flow.input);
  slot[flow.input] = prog.slots++;
  grids[flow.input] = prog.input;

  auto readers = [&](const std::string& tensor) {
    std::vector<const nn::dataflow_node*> r;
    for (const auto& n : flow.nodes)
      for (const auto& in : n.inputs)
        if (in == tensor) r.push_back(&n);
    return r;
  };

  // The tensor an op's result is requantized to: its own output if quantized, else through
  // activations the runtime folds into the QuantizeLinear after them (ReluQuantFusion,
  // ClipQuantFusion: the clip lies outside the grid's own range, so saturation does its work).
  std::set<const void*> absorbed;
  auto fused_output = [&](const nn::dataflow_node& node) -> std::string {
    std::string t = node.output;
    const nn::dataflow_node* at = &node;
    while (!quantized(t)) {
      const auto r = readers(t);
      if (t == flow.output || r.size() != 1 || (!r[0]->is_relu() && !r[0]->clip_layer))
        unsupported(at->name, "has an unquantized output that is not followed by a ReLU or "
                              "Clip the target folds into a QuantizeLinear (its op would run in "
                              "float)");
      const nn::dataflow_node& a = *r[0];
      const std::string next = a.output;
      if (quantized(next) && !structure_only) {
        const grid g = grid_of(next);
        const float lo = g.scale * static_cast<float>(0 - g.zero_point);
        const float hi = g.scale * static_cast<float>(255 - g.zero_point);
        const float cmin = a.clip_layer ? a.clip_layer->min_value() : 0.0f;
        const float cmax = a.clip_layer ? a.clip_layer->max_value() : std::numeric_limits<float>::infinity();
        if (!(cmin <= lo && cmax >= hi))
          unsupported(a.name, "clips to [" + std::to_string(cmin) + ", " + std::to_string(cmax) +
                                  "] inside its output grid [" + std::to_string(lo) + ", " +
                                  std::to_string(hi) + "]: ONNX Runtime keeps such a Clip as a "
                                  "float op, which the integer mode does not simulate");
      }
      absorbed.insert(a.layer);
      at = &a;
      t = next;
    }
    return t;
  };

  auto input_of = [&](const nn::dataflow_node& node, std::size_t i) {
    const std::string& t = node.inputs.at(i);
    auto it = slot.find(t);
    if (it == slot.end())
      unsupported(node.name, "reads '" + t + "', which is not a quantized tensor of the integer "
                             "program (the op would run in float)");
    return it->second;
  };

  // Appends `item` to its kind's steps and makes the next value slot the home of `out_t`.
  auto emit = [&](step& st, step::kind k, auto& items, auto item, const std::string& out_t) {
    st.k = k;
    st.index = items.size();
    slot[out_t] = prog.slots;
    grids[out_t] = item.out;
    items.push_back(std::move(item));
  };

  nn::describe_dataflow(sim.model(), [&](const nn::dataflow_node& node, auto& layer) {
    using L = std::remove_cvref_t<decltype(layer)>;
    if (absorbed.count(node.layer)) return;
    step st;
    if constexpr (std::is_same_v<L, nn::conv2d> || std::is_same_v<L, nn::linear>) {
      constexpr bool is_linear = std::is_same_v<L, nn::linear>;
      const std::size_t in = input_of(node, 0);
      const grid gx = grids.at(node.inputs[0]);
      const std::string wname = node.name + ".weight";
      if (!sim.has_quantizer(wname) || !quantizes(sim.param_quantizer(wname)))
        unsupported(node.name, "has float weights; QLinearConv/QGemm take integer weights");
      const auto& wq = sim.param_quantizer(wname);
      {
        const quantizer_settings& ws = wq.settings();
        if (ws.dtype != dtype::integer || ws.bitwidth > 8)
          unsupported(node.name, std::string("has ") +
                                     (ws.dtype != dtype::integer ? "float16"
                                                                 : std::to_string(ws.bitwidth) + "-bit") +
                                     " weights; the simulated kernels take integer weights of at "
                                     "most 8 bits (int8 storage)");
        if (wq.per_channel() && ws.channel_axis != 0)
          unsupported(node.name, "has per-channel weights along axis " +
                                     std::to_string(*ws.channel_axis) +
                                     "; the target scales output channels (axis 0)");
      }
      if (!structure_only && !wq.has_encodings())
        QKIT_THROW(config_error, "integer target simulation: '", wname,
                   "' has no encodings yet (compute or load encodings first)");
      const std::vector<encoding> no_encodings;
      const auto& wenc = structure_only ? no_encodings : wq.encodings();
      for (const auto& e : wenc) {
        if (e.dtype != dtype::integer || e.bitwidth > 8)
          unsupported(node.name, "has " + std::to_string(e.bitwidth) +
                                     "-bit weights; the simulated kernels take weights of at most "
                                     "8 bits (int8 storage)");
      }
      if (layer.has_bias() && sim.has_quantizer(node.name + ".bias") &&
          quantizes(sim.param_quantizer(node.name + ".bias")))
        unsupported(node.name, "has a quantized bias; the target quantizes a float bias to int32 "
                               "at s_x·s_w itself (disable the bias quantizer)");
      const std::string out_t = fused_output(node);
      const grid gy = grid_of(out_t);
      if (structure_only) {
        slot[out_t] = prog.slots;
        grids[out_t] = gy;
        st.output = prog.slots++;
        return;
      }

      weighted_step w;
      w.name = node.name;
      w.is_linear = is_linear;
      w.in = gx;
      w.out = gy;
      const tensor& W = layer.weight();
      std::vector<std::int8_t> q(W.size());
      if (wenc.size() == 1) {
        quantize<std::int8_t>(W.data(), q.data(), W.size(), wenc[0], Sim::rounding_policy);
      } else {
        const shape_type shape(W.shape().begin(), W.shape().end());
        quantize_per_channel<std::int8_t>(W.data(), q.data(), std::span<const std::size_t>(shape),
                                          0, wenc, Sim::rounding_policy);
      }
      const std::size_t O = W.shape(0), Kall = W.size() / O;
      w.multiplier.resize(O);
      w.bias.assign(O, 0);
      // Weights live in int8 storage with their zero point (an asymmetric or unsigned grid
      // shifted by 128, the same integers the runtime's uint8 kernels see less 128).
      w.w_zero_point.resize(O);
      for (std::size_t o = 0; o < O; ++o) {
        w.w_zero_point[o] = static_cast<std::int32_t>(wenc[wenc.size() == 1 ? 0 : o].zero_point_signed());
        w.has_w_zero_point = w.has_w_zero_point || w.w_zero_point[o] != 0;
      }
      for (std::size_t o = 0; o < O; ++o) {
        const float sw = static_cast<float>(wenc[wenc.size() == 1 ? 0 : o].scale);
        w.multiplier[o] = detail::multiplier(node.name, gx.scale, sw, gy.scale);
        if (layer.has_bias())
          w.bias[o] = detail::quantize_bias(node.name, layer.bias().data()[o], gx.scale, sw);
      }
      if constexpr (is_linear) {
        w.shape.C = Kall;
        w.shape.O = O;
        w.groups.emplace_back(O, Kall, q.data());
        fold_zero_points(w, gx.zero_point, Kall);
      } else {
        const auto ks = layer.kernel_shape();
        w.shape.C = layer.in_channels();
        w.shape.O = O;
        w.shape.KH = ks[0];
        w.shape.KW = ks[1];
        w.shape.p = layer.params();  // H and W are the input's, set per run
        const std::size_t G = layer.groups();
        w.depthwise = G == w.shape.C && G == O;
        if (w.depthwise) {
          w.dw_weights.resize(q.size());
          for (std::size_t i = 0; i < q.size(); ++i)
            w.dw_weights[i] = std::int32_t(q[i]) - w.w_zero_point[i / Kall];
        } else {
          const std::size_t Og = O / G;
          for (std::size_t g = 0; g < G; ++g)
            w.groups.emplace_back(Og, Kall, q.data() + g * Og * Kall);
          fold_zero_points(w, gx.zero_point, Kall);
        }
      }
      st.inputs = {in};
      emit(st, step::kind::weighted, prog.weighted, std::move(w), out_t);
    } else if constexpr (std::is_same_v<L, nn::add>) {
      add_step a;
      a.name = node.name;
      st.inputs = {input_of(node, 0), input_of(node, 1)};
      a.a = grids.at(node.inputs[0]);
      a.b = grids.at(node.inputs[1]);
      const std::string out_t = fused_output(node);
      a.out = grid_of(out_t);
      if (!structure_only) {
        qlinear_add_parameters(a);
        // The kernel converts with vcvtps2dq, which saturates nowhere: every sum must stay
        // well inside int32 for the clamp to [0, 255] to be the kernel's packs.
        const float bound = 255.0f * (a.ra + a.rb) + std::fabs(a.fixed);
        if (!(std::isfinite(a.ra) && std::isfinite(a.rb) && bound < 1.0e9f))
          detail::unsupported(node.name, "adds with scale ratios s_a/s_c = " + std::to_string(a.ra) +
                                             ", s_b/s_c = " + std::to_string(a.rb) +
                                             " that QLinearAdd's float conversion cannot carry");
      }
      emit(st, step::kind::add, prog.adds, std::move(a), out_t);
    } else if constexpr (std::is_same_v<L, nn::global_avg_pool>) {
      gap_step g;
      g.name = node.name;
      st.inputs = {input_of(node, 0)};
      g.in = grids.at(node.inputs[0]);
      const std::string out_t = fused_output(node);
      g.out = grid_of(out_t);
      emit(st, step::kind::gap, prog.gaps, std::move(g), out_t);
    } else if constexpr (std::is_same_v<L, nn::flatten>) {
      reshape_step r;
      r.name = node.name;
      r.axis = L::axis;
      st.inputs = {input_of(node, 0)};
      r.in = grids.at(node.inputs[0]);
      if (!quantized(node.output))
        unsupported(node.name, "has an unquantized output; its reader would take float values");
      r.out = grid_of(node.output);
      r.same_grid = r.in.scale == r.out.scale && r.in.zero_point == r.out.zero_point;
      emit(st, step::kind::reshape, prog.reshapes, std::move(r), node.output);
    } else {
      unsupported(node.name, "is a " + node.op_type +
                                 ", which the integer mode does not simulate (simulated: Conv, "
                                 "Gemm, Add, GlobalAveragePool, Flatten, and Relu/Clip fused "
                                 "into the op before them)");
    }
    st.output = prog.slots++;
    prog.steps.push_back(std::move(st));
  });
  auto it = slot.find(flow.output);
  if (it == slot.end())
    unsupported(flow.output, "(the model output) is not a quantized tensor of the program");
  prog.output_slot = it->second;
  prog.output = grids.at(flow.output);
  return prog;
}

}  // namespace integer
}  // namespace qkit
