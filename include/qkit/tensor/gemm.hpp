// qkit/tensor/gemm.hpp — single-precision matrix multiply, the kernel everything leans on.
//
//   C[M×N] = alpha · op(A)[M×K] · op(B)[K×N] + beta · C        (row-major, leading dims)
//
// gemm_reference is the plain triple loop that the fast kernel is tested against.
//
// The fast kernel follows the GotoBLAS/BLIS structure: op(B) is packed into KC×NR column
// panels and op(A) into MR×KC row panels (transposes are absorbed by the packing), and a
// register-blocked micro-kernel computes an MR×NR tile of C with explicit FMAs. Threads split
// only the tiles of C, never K, and the K blocking does not depend on the thread count, so
// every element of C is computed by the same sequence of operations whatever the threads.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdlib>
#include <new>
#include <type_traits>

#include "../config.hpp"
#include "../error.hpp"
#include "thread_pool.hpp"

// Built for x86-64 without FMA (qkit::qkit alone, no -march=native), the xsimd kernels would
// multiply and add in two roundings where an FMA build rounds once, so every product — and the
// activations and encodings computed from it — would differ in its last bits with the compiler
// flags. Such builds therefore carry AVX2+FMA kernels compiled through the target attribute and
// run them when the CPU has FMA (every x86-64 CPU since 2013): they do exactly the arithmetic of
// an FMA build, so results depend on neither the flags nor the CPU. Only a CPU without FMA
// still takes the two-rounding kernels.
#if (defined(__x86_64__) || defined(__i386__)) && !defined(__FMA__) && \
    (defined(__GNUC__) || defined(__clang__))
#define QKIT_RUNTIME_FMA 1
#include <immintrin.h>
#else
#define QKIT_RUNTIME_FMA 0
#endif

namespace qkit {

enum class transpose { no, yes };

/// The scalar reference: obvious loops, accumulation over k in increasing order.
inline void gemm_reference(transpose ta, transpose tb, std::size_t M, std::size_t N,
                           std::size_t K, float alpha, const float* A, std::size_t lda,
                           const float* B, std::size_t ldb, float beta, float* C,
                           std::size_t ldc) {
  for (std::size_t i = 0; i < M; ++i) {
    for (std::size_t j = 0; j < N; ++j) {
      float acc = 0.0f;
      for (std::size_t k = 0; k < K; ++k) {
        const float a = ta == transpose::no ? A[i * lda + k] : A[k * lda + i];
        const float b = tb == transpose::no ? B[k * ldb + j] : B[j * ldb + k];
        acc += a * b;
      }
      float& c = C[i * ldc + j];
      c = alpha * acc + (beta == 0.0f ? 0.0f : beta * c);
    }
  }
}

namespace detail {

/// A grow-only, 64-byte aligned scratch buffer per thread and per Slot (kernels that nest,
/// like convolution calling gemm, use different slots so they never share one).
template <int Slot>
inline float* scratch_buffer(std::size_t floats) {
  struct buffer {
    float* data = nullptr;
    std::size_t capacity = 0;
    ~buffer() { std::free(data); }
  };
  thread_local buffer b;
  if (floats > b.capacity) {
    std::free(b.data);
    b.data = nullptr;
    b.capacity = 0;
    const std::size_t bytes = (floats * sizeof(float) + 63) / 64 * 64;
    b.data = static_cast<float*>(std::aligned_alloc(64, bytes));
    if (!b.data) throw std::bad_alloc();
    b.capacity = bytes / sizeof(float);
  }
  return b.data;
}

/// x·y + z in one rounding wherever the target has FMA. xsimd 8.1 implements xsimd::fma with
/// FMA instructions for fma3<sse4_2>/fma3<avx>/fma3<avx2> but not for AVX-512, where it falls
/// back to a multiply and an add (two roundings, twice the instructions).
template <class Arch>
inline xsimd::batch<float, Arch> fused_multiply_add(const xsimd::batch<float, Arch>& x,
                                                    const xsimd::batch<float, Arch>& y,
                                                    const xsimd::batch<float, Arch>& z) {
#if XSIMD_WITH_AVX512F
  if constexpr (std::is_base_of_v<xsimd::avx512f, Arch>)
    return xsimd::batch<float, Arch>(_mm512_fmadd_ps(x, y, z));
  else
#endif
    return xsimd::fma(x, y, z);
}

/// Register tile of the micro-kernel: MR rows of C by NV vectors (NR = NV·W columns).
/// AVX-512 has 32 vector registers: 8×3 zmm accumulators + 3 for B + 1 broadcast; the
/// 8-row tile also divides the channel counts (16, 32, 64...) convolutions use as M.
/// 16-register targets (AVX2, SSE, NEON in 8.1) take 6×2 accumulators.
template <class Arch>
struct gemm_tile {
  static constexpr std::size_t W = xsimd::batch<float, Arch>::size;
  static constexpr bool wide = W >= 16;
  static constexpr std::size_t MR = wide ? 8 : 6;
  static constexpr std::size_t NV = wide ? 3 : 2;
  static constexpr std::size_t NR = NV * W;
  static constexpr std::size_t KC = 256;   // K block (up to 1.5×): A panel in L1, B panel in L2
  static constexpr std::size_t MC = 1024;  // rows of op(A) packed at once (1 MiB)
  static constexpr std::size_t NC = 3072;  // columns of op(B) packed at once (3 MiB)
  static constexpr std::size_t tile_cols = 480 / NR * NR;  // a task's B tile stays in L2
  static constexpr std::size_t tile_rows = 64 / MR * MR;
};

/// Packs op(A)[i0 .. i0+MR, k0 .. k0+kc) into one panel: for each k, MR consecutive values;
/// rows past M are zero so the micro-kernel never branches.
template <std::size_t MR>
inline void pack_a_panel(transpose ta, const float* A, std::size_t lda, std::size_t i0,
                         std::size_t rows, std::size_t k0, std::size_t kc, float* out) {
  if (ta == transpose::no) {
    // Writes in order, reading MR row streams (each cache line is reused over 16 k).
    const float* src = A + i0 * lda + k0;
    for (std::size_t k = 0; k < kc; ++k)
      for (std::size_t r = 0; r < rows; ++r) out[k * MR + r] = src[r * lda + k];
  } else {
    for (std::size_t k = 0; k < kc; ++k) {
      const float* src = A + (k0 + k) * lda + i0;
      for (std::size_t r = 0; r < rows; ++r) out[k * MR + r] = src[r];
    }
  }
  if (rows < MR)
    for (std::size_t k = 0; k < kc; ++k)
      for (std::size_t r = rows; r < MR; ++r) out[k * MR + r] = 0.0f;
}

#if XSIMD_WITH_AVX512F
/// dst[c·ldd + r] = src[r·lds + c] for a 16×16 block, in registers (unpack, then 128-bit lane
/// shuffles in two rounds).
inline void transpose_16x16(const float* src, std::size_t lds, float* dst, std::size_t ldd) {
  __m512 r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * lds);
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  // u[4q + m] holds, in 128-bit lane L, rows 4q..4q+3 of column 4L + m.
  __m512 u[16];
  for (int q = 0; q < 4; ++q) {
    u[4 * q + 0] = _mm512_shuffle_ps(t[4 * q], t[4 * q + 2], 0x44);
    u[4 * q + 1] = _mm512_shuffle_ps(t[4 * q], t[4 * q + 2], 0xEE);
    u[4 * q + 2] = _mm512_shuffle_ps(t[4 * q + 1], t[4 * q + 3], 0x44);
    u[4 * q + 3] = _mm512_shuffle_ps(t[4 * q + 1], t[4 * q + 3], 0xEE);
  }
  for (int m = 0; m < 4; ++m) {
    const __m512 x01 = _mm512_shuffle_f32x4(u[m], u[4 + m], 0x44);
    const __m512 x23 = _mm512_shuffle_f32x4(u[m], u[4 + m], 0xEE);
    const __m512 y01 = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0x44);
    const __m512 y23 = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0xEE);
    _mm512_storeu_ps(dst + (0 + m) * ldd, _mm512_shuffle_f32x4(x01, y01, 0x88));
    _mm512_storeu_ps(dst + (4 + m) * ldd, _mm512_shuffle_f32x4(x01, y01, 0xDD));
    _mm512_storeu_ps(dst + (8 + m) * ldd, _mm512_shuffle_f32x4(x23, y23, 0x88));
    _mm512_storeu_ps(dst + (12 + m) * ldd, _mm512_shuffle_f32x4(x23, y23, 0xDD));
  }
}
#endif

/// Packs op(B)[k0 .. k0+kc, j0 .. j0+NR) into one panel: for each k, NR consecutive values;
/// columns past N are zero.
template <class Arch, std::size_t NR>
inline void pack_b_panel(transpose tb, const float* B, std::size_t ldb, std::size_t j0,
                         std::size_t cols, std::size_t k0, std::size_t kc, float* out) {
  using batch = xsimd::batch<float, Arch>;
  constexpr std::size_t W = batch::size;
  if (tb == transpose::no) {
    if (cols == NR) {
      for (std::size_t k = 0; k < kc; ++k) {
        const float* src = B + (k0 + k) * ldb + j0;
        for (std::size_t v = 0; v < NR; v += W)
          batch::load_unaligned(src + v).store_aligned(out + k * NR + v);
      }
    } else {
      for (std::size_t k = 0; k < kc; ++k) {
        const float* src = B + (k0 + k) * ldb + j0;
        std::size_t c = 0;
        for (; c < cols; ++c) out[k * NR + c] = src[c];
        for (; c < NR; ++c) out[k * NR + c] = 0.0f;
      }
    }
    return;
  }
  // Transposing pack, in 16×16 blocks so that reads and writes both stay in L1.
  const float* src = B + j0 * ldb + k0;
  for (std::size_t c0 = 0; c0 < cols; c0 += 16) {
    const std::size_t cn = std::min<std::size_t>(16, cols - c0);
    for (std::size_t kb = 0; kb < kc; kb += 16) {
      const std::size_t kn = std::min<std::size_t>(16, kc - kb);
#if XSIMD_WITH_AVX512F
      if constexpr (std::is_base_of_v<xsimd::avx512f, Arch>) {
        if (cn == 16 && kn == 16) {
          transpose_16x16(src + c0 * ldb + kb, ldb, out + kb * NR + c0, NR);
          continue;
        }
      }
#endif
      for (std::size_t k = kb; k < kb + kn; ++k)
        for (std::size_t c = c0; c < c0 + cn; ++c) out[k * NR + c] = src[c * ldb + k];
    }
  }
  if (cols < NR)
    for (std::size_t k = 0; k < kc; ++k)
      for (std::size_t c = cols; c < NR; ++c) out[k * NR + c] = 0.0f;
}

/// C tile (rows×cols ≤ MR×NR) = alpha·(a_panel · b_panel) + beta·C, beta == 0 ignoring C.
/// NV vectors of the panel's NVP are computed: a narrow edge of C (a few columns past the
/// last full panel) takes fewer vectors instead of wasting whole FMAs on zeros.
template <class Arch, std::size_t MR, std::size_t NV, std::size_t NVP = NV>
inline void gemm_micro_kernel(std::size_t kc, const float* __restrict a, const float* __restrict b,
                              float alpha, float beta, float* __restrict c, std::size_t ldc,
                              std::size_t rows, std::size_t cols) {
  using batch = xsimd::batch<float, Arch>;
  constexpr std::size_t W = batch::size;
  constexpr std::size_t NR = NV * W, panel = NVP * W;
  batch acc[MR][NV];
#pragma GCC unroll 32
  for (std::size_t i = 0; i < MR; ++i)
#pragma GCC unroll 8
    for (std::size_t v = 0; v < NV; ++v) acc[i][v] = batch(0.0f);

  for (std::size_t k = 0; k < kc; ++k) {
    batch bv[NV];
#pragma GCC unroll 8
    for (std::size_t v = 0; v < NV; ++v) bv[v] = batch::load_aligned(b + v * W);
#pragma GCC unroll 32
    for (std::size_t i = 0; i < MR; ++i) {
      const batch av(a[i]);
#pragma GCC unroll 8
      for (std::size_t v = 0; v < NV; ++v) acc[i][v] = fused_multiply_add(av, bv[v], acc[i][v]);
    }
    a += MR;
    b += panel;
  }

  const batch va(alpha), vb(beta);
  if (rows == MR && cols == NR) {
#pragma GCC unroll 32
    for (std::size_t i = 0; i < MR; ++i) {
      float* ci = c + i * ldc;
#pragma GCC unroll 8
      for (std::size_t v = 0; v < NV; ++v) {
        const batch r = beta == 0.0f
                            ? va * acc[i][v]
                            : fused_multiply_add(va, acc[i][v], vb * batch::load_unaligned(ci + v * W));
        r.store_unaligned(ci + v * W);
      }
    }
    return;
  }
  // Edge tile: the same arithmetic, lane by lane, on the valid part only.
  alignas(64) float tile[MR * NR];
#pragma GCC unroll 32
  for (std::size_t i = 0; i < MR; ++i)
#pragma GCC unroll 8
    for (std::size_t v = 0; v < NV; ++v) acc[i][v].store_aligned(tile + i * NR + v * W);
  for (std::size_t i = 0; i < rows; ++i)
    for (std::size_t j = 0; j < cols; ++j) {
      float& cij = c[i * ldc + j];
      cij = beta == 0.0f ? alpha * tile[i * NR + j] : std::fma(alpha, tile[i * NR + j], beta * cij);
    }
}

/// Runs the micro-kernel with as few vectors as the tile's columns need.
template <class Arch, std::size_t MR, std::size_t NVP, std::size_t NV = NVP>
inline void micro_kernel_for_width(std::size_t kc, const float* a, const float* b, float alpha,
                                   float beta, float* c, std::size_t ldc, std::size_t rows,
                                   std::size_t cols) {
  constexpr std::size_t W = xsimd::batch<float, Arch>::size;
  if constexpr (NV > 1) {
    if (cols <= (NV - 1) * W) {
      micro_kernel_for_width<Arch, MR, NVP, NV - 1>(kc, a, b, alpha, beta, c, ldc, rows, cols);
      return;
    }
  }
  gemm_micro_kernel<Arch, MR, NV, NVP>(kc, a, b, alpha, beta, c, ldc, rows, cols);
}

#if QKIT_RUNTIME_FMA
/// True when this CPU (and its OS) runs AVX2 and FMA instructions.
inline bool cpu_has_avx2_fma() {
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
}

/// The tile of the run-time AVX2+FMA kernel: 16 ymm registers, 6×2 accumulators as xsimd's
/// AVX2 target uses. Packing still uses the build's own SIMD width (NR is a multiple of it).
struct gemm_tile_fma {
  static constexpr std::size_t W = 8;
  static constexpr std::size_t MR = 6;
  static constexpr std::size_t NV = 2;
  static constexpr std::size_t NR = NV * W;
  static constexpr std::size_t KC = 256;  // as every other target: the K blocking decides results
  static constexpr std::size_t MC = 1024;
  static constexpr std::size_t NC = 3072;
  static constexpr std::size_t tile_cols = 480 / NR * NR;
  static constexpr std::size_t tile_rows = 64 / MR * MR;
  static constexpr bool runtime_fma = true;
};

/// gemm_micro_kernel's arithmetic, operation for operation, in AVX2+FMA intrinsics.
template <std::size_t MR, std::size_t NV, std::size_t NVP = NV>
__attribute__((target("avx2,fma"))) inline void gemm_micro_kernel_fma(
    std::size_t kc, const float* __restrict a, const float* __restrict b, float alpha, float beta,
    float* __restrict c, std::size_t ldc, std::size_t rows, std::size_t cols) {
  constexpr std::size_t W = 8, NR = NV * W, panel = NVP * W;
  __m256 acc[MR][NV];
  for (std::size_t i = 0; i < MR; ++i)
    for (std::size_t v = 0; v < NV; ++v) acc[i][v] = _mm256_setzero_ps();
  for (std::size_t k = 0; k < kc; ++k) {
    __m256 bv[NV];
    for (std::size_t v = 0; v < NV; ++v) bv[v] = _mm256_load_ps(b + v * W);
    for (std::size_t i = 0; i < MR; ++i) {
      const __m256 av = _mm256_broadcast_ss(a + i);
      for (std::size_t v = 0; v < NV; ++v) acc[i][v] = _mm256_fmadd_ps(av, bv[v], acc[i][v]);
    }
    a += MR;
    b += panel;
  }
  const __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
  if (rows == MR && cols == NR) {
    for (std::size_t i = 0; i < MR; ++i) {
      float* ci = c + i * ldc;
      for (std::size_t v = 0; v < NV; ++v) {
        const __m256 r = beta == 0.0f ? _mm256_mul_ps(va, acc[i][v])
                                      : _mm256_fmadd_ps(va, acc[i][v],
                                                        _mm256_mul_ps(vb, _mm256_loadu_ps(ci + v * W)));
        _mm256_storeu_ps(ci + v * W, r);
      }
    }
    return;
  }
  alignas(64) float tile[MR * NR];
  for (std::size_t i = 0; i < MR; ++i)
    for (std::size_t v = 0; v < NV; ++v) _mm256_store_ps(tile + i * NR + v * W, acc[i][v]);
  for (std::size_t i = 0; i < rows; ++i)
    for (std::size_t j = 0; j < cols; ++j) {
      float& cij = c[i * ldc + j];
      cij = beta == 0.0f ? alpha * tile[i * NR + j] : std::fma(alpha, tile[i * NR + j], beta * cij);
    }
}

template <std::size_t MR, std::size_t NVP, std::size_t NV = NVP>
inline void micro_kernel_for_width_fma(std::size_t kc, const float* a, const float* b, float alpha,
                                       float beta, float* c, std::size_t ldc, std::size_t rows,
                                       std::size_t cols) {
  if constexpr (NV > 1) {
    if (cols <= (NV - 1) * gemm_tile_fma::W) {
      micro_kernel_for_width_fma<MR, NVP, NV - 1>(kc, a, b, alpha, beta, c, ldc, rows, cols);
      return;
    }
  }
  gemm_micro_kernel_fma<MR, NV, NVP>(kc, a, b, alpha, beta, c, ldc, rows, cols);
}
#endif  // QKIT_RUNTIME_FMA

/// The packed, blocked GEMM for one SIMD architecture (gemm uses the default one; tests also
/// run narrower ones to check the kernels of other targets on this host).
template <class Arch, class Tile = gemm_tile<Arch>>
void gemm_blocked(transpose ta, transpose tb, std::size_t M, std::size_t N, std::size_t K,
                  float alpha, const float* A, std::size_t lda, const float* B, std::size_t ldb,
                  float beta, float* C, std::size_t ldc) {
  using cfg = Tile;
  constexpr std::size_t MR = cfg::MR, NR = cfg::NR, KC = cfg::KC;
  if (M == 0 || N == 0) return;
  QKIT_PRECONDITION(ldc >= N, shape_error, "gemm: ldc (", ldc, ") is less than N (", N, ")");
  QKIT_PRECONDITION(K == 0 || lda >= (ta == transpose::no ? K : M), shape_error, "gemm: lda (",
                    lda, ") is less than the row length of A as stored (",
                    ta == transpose::no ? K : M, ")");
  QKIT_PRECONDITION(K == 0 || ldb >= (tb == transpose::no ? N : K), shape_error, "gemm: ldb (",
                    ldb, ") is less than the row length of B as stored (",
                    tb == transpose::no ? N : K, ")");
  if (K == 0 || alpha == 0.0f) {
    parallel_for(0, M, 64, [&](std::size_t lo, std::size_t hi) {
      for (std::size_t i = lo; i < hi; ++i)
        for (std::size_t j = 0; j < N; ++j)
          C[i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
    });
    return;
  }

  // Small products are not worth waking other threads for.
  const bool threaded = double(M) * double(N) * double(K) >= 64.0 * 64.0 * 64.0;
  // Whole panels per block, so that packing a block never runs past its buffer.
  constexpr std::size_t MC = std::max(cfg::MC / MR, std::size_t{1}) * MR;
  constexpr std::size_t NC = std::max(cfg::NC / NR, std::size_t{1}) * NR;
  const std::size_t mc_max = std::min(MC, (M + MR - 1) / MR * MR);
  const std::size_t nc_max = std::min(NC, (N + NR - 1) / NR * NR);
  // K is cut into blocks of about KC, the nearest whole number of them, so that no short
  // trailing block costs a pass over C for little work (K = 288 is one block, 576 two).
  const std::size_t k_blocks = std::max<std::size_t>(1, (K + KC / 2) / KC);
  const std::size_t kc_max = (K + k_blocks - 1) / k_blocks;
  float* packed_b = scratch_buffer<0>(nc_max * kc_max + mc_max * kc_max);
  float* packed_a = packed_b + nc_max * kc_max;

  auto run = [&](std::size_t n, std::size_t grain, const auto& fn) {
    if (threaded)
      parallel_for(0, n, grain, fn);
    else
      fn(std::size_t{0}, n);
  };

  for (std::size_t jc = 0; jc < N; jc += NC) {
    const std::size_t nc = std::min(NC, N - jc);
    const std::size_t n_panels = (nc + NR - 1) / NR;
    for (std::size_t pc = 0; pc < K; pc += kc_max) {
      const std::size_t kc = std::min(kc_max, K - pc);
      const float beta_k = pc == 0 ? beta : 1.0f;
      for (std::size_t ic = 0; ic < M; ic += MC) {
        const std::size_t mc = std::min(MC, M - ic);
        const std::size_t m_panels = (mc + MR - 1) / MR;
        // Packing is one parallel region: B's panels (with the first block of A) or A's.
        const std::size_t b_panels = ic == 0 ? n_panels : 0;
        run(b_panels + m_panels, 4, [&](std::size_t lo, std::size_t hi) {
          for (std::size_t p = lo; p < hi; ++p) {
            if (p < b_panels) {
              pack_b_panel<Arch, NR>(tb, B, ldb, jc + p * NR, std::min(NR, nc - p * NR), pc, kc,
                                     packed_b + p * NR * kc);
            } else {
              const std::size_t q = p - b_panels;
              pack_a_panel<MR>(ta, A, lda, ic + q * MR, std::min(MR, mc - q * MR), pc, kc,
                               packed_a + q * MR * kc);
            }
          }
        });
        // Tasks are tiles of C; consecutive tasks share their B tile, which stays in L2. Small
        // products get smaller tiles so that every thread has work (the tiling never changes
        // a result: each element's arithmetic is the same in any tile).
        std::size_t tm = std::min(m_panels, std::max<std::size_t>(cfg::tile_rows / MR, 1));
        std::size_t tn = std::min(n_panels, std::max<std::size_t>(cfg::tile_cols / NR, 1));
        const std::size_t wanted = threaded ? 2 * get_num_threads() : 1;
        while (((m_panels + tm - 1) / tm) * ((n_panels + tn - 1) / tn) < wanted &&
               (tm > 1 || tn > 1)) {
          if (tn >= tm) tn = (tn + 1) / 2;
          else tm = (tm + 1) / 2;
        }
        const std::size_t m_tiles = (m_panels + tm - 1) / tm, n_tiles = (n_panels + tn - 1) / tn;
        run(m_tiles * n_tiles, 1, [&](std::size_t lo, std::size_t hi) {
          for (std::size_t t = lo; t < hi; ++t) {
            const std::size_t mt = t % m_tiles, nt = t / m_tiles;
            const std::size_t p_end = std::min(m_panels, (mt + 1) * tm);
            const std::size_t q_end = std::min(n_panels, (nt + 1) * tn);
            for (std::size_t p = mt * tm; p < p_end; ++p) {
              const std::size_t i0 = p * MR, rows = std::min(MR, mc - i0);
              for (std::size_t q = nt * tn; q < q_end; ++q) {
                const std::size_t j0 = q * NR, cols = std::min(NR, nc - j0);
#if QKIT_RUNTIME_FMA
                if constexpr (requires { cfg::runtime_fma; })
                  micro_kernel_for_width_fma<MR, cfg::NV>(
                      kc, packed_a + p * MR * kc, packed_b + q * NR * kc, alpha, beta_k,
                      C + (ic + i0) * ldc + jc + j0, ldc, rows, cols);
                else
#endif
                  micro_kernel_for_width<Arch, MR, cfg::NV>(
                      kc, packed_a + p * MR * kc, packed_b + q * NR * kc, alpha, beta_k,
                      C + (ic + i0) * ldc + jc + j0, ldc, rows, cols);
              }
            }
          }
        });
      }
    }
  }
}

}  // namespace detail

/// The fast GEMM (same contract as gemm_reference; results may differ from it by rounding
/// only, and never depend on the thread count). Every element is one chain of fused
/// multiply-adds over k (in blocks of about 256, each block's sum added to C with one more),
/// so the result is the same bits in every build and on every CPU with FMA.
inline void gemm(transpose ta, transpose tb, std::size_t M, std::size_t N, std::size_t K,
                 float alpha, const float* A, std::size_t lda, const float* B, std::size_t ldb,
                 float beta, float* C, std::size_t ldc) {
#if QKIT_RUNTIME_FMA
  if (detail::cpu_has_avx2_fma()) {
    detail::gemm_blocked<xsimd::default_arch, detail::gemm_tile_fma>(ta, tb, M, N, K, alpha, A,
                                                                      lda, B, ldb, beta, C, ldc);
    return;
  }
#endif
  detail::gemm_blocked<xsimd::default_arch>(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C,
                                            ldc);
}

}  // namespace qkit
