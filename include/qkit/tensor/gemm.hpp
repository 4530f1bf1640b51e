// qkit/tensor/gemm.hpp — single-precision matrix multiply, the kernel everything leans on.
//
//   C[M×N] = alpha · op(A)[M×K] · op(B)[K×N] + beta · C        (row-major, leading dims)
//
// gemm_reference is the plain triple loop that the fast kernel is tested against.
#pragma once

#include <cstddef>

#include "../config.hpp"
#include "../error.hpp"
#include "thread_pool.hpp"

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

/// The fast GEMM (same contract as gemm_reference; results may differ from it by rounding
/// only, and never depend on the thread count).
inline void gemm(transpose ta, transpose tb, std::size_t M, std::size_t N, std::size_t K,
                 float alpha, const float* A, std::size_t lda, const float* B, std::size_t ldb,
                 float beta, float* C, std::size_t ldc) {
  parallel_for(0, M, 16, [&](std::size_t lo, std::size_t hi) {
    gemm_reference(ta, tb, hi - lo, N, K, alpha,
                   ta == transpose::no ? A + lo * lda : A + lo, lda, B, ldb, beta,
                   C + lo * ldc, ldc);
  });
}

}  // namespace qkit
