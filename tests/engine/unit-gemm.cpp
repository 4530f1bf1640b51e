// Tests for qkit/tensor/gemm.hpp: the fast GEMM against the scalar reference (all transposes,
// alpha/beta, leading dimensions, edge sizes), the kernels of narrower SIMD targets, and
// bit-identical results whatever the thread count.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <qkit/tensor/gemm.hpp>

namespace unit_gemm {  // the suite is one translation unit: tests/CMakeLists.txt

namespace {

using qkit::transpose;

struct problem {
  transpose ta, tb;
  std::size_t M, N, K, lda, ldb, ldc;
  float alpha, beta;
  std::vector<float> a, b, c;

  problem(transpose ta_, transpose tb_, std::size_t M_, std::size_t N_, std::size_t K_,
          float alpha_, float beta_, std::size_t pad, std::mt19937& rng)
      : ta(ta_), tb(tb_), M(M_), N(N_), K(K_), alpha(alpha_), beta(beta_) {
    std::uniform_real_distribution<float> d(-1.0f, 1.0f);
    lda = (ta == transpose::no ? K : M) + pad;
    ldb = (tb == transpose::no ? N : K) + pad;
    ldc = N + pad;
    a.resize((ta == transpose::no ? M : K) * lda + 1);
    b.resize((tb == transpose::no ? K : N) * ldb + 1);
    c.resize(M * ldc + 1);
    for (auto& v : a) v = d(rng);
    for (auto& v : b) v = d(rng);
    for (auto& v : c) v = beta == 0.0f ? std::numeric_limits<float>::quiet_NaN() : d(rng);
  }

  float a_at(std::size_t i, std::size_t k) const {
    return ta == transpose::no ? a[i * lda + k] : a[k * lda + i];
  }
  float b_at(std::size_t k, std::size_t j) const {
    return tb == transpose::no ? b[k * ldb + j] : b[j * ldb + k];
  }
};

template <class Gemm>
void check_against_reference(const problem& p, Gemm&& fast, const std::string& what) {
  std::vector<float> c_fast = p.c, c_ref = p.c;
  fast(p.ta, p.tb, p.M, p.N, p.K, p.alpha, p.a.data(), p.lda, p.b.data(), p.ldb, p.beta,
       c_fast.data(), p.ldc);
  qkit::gemm_reference(p.ta, p.tb, p.M, p.N, p.K, p.alpha, p.a.data(), p.lda, p.b.data(), p.ldb,
                       p.beta, c_ref.data(), p.ldc);
  std::size_t bad = 0;
  for (std::size_t i = 0; i < p.M; ++i)
    for (std::size_t j = 0; j < p.N; ++j) {
      // Rounding differs with the summation order: bound it by K·eps·Σ|a||b|.
      double mag = 0.0;
      for (std::size_t k = 0; k < p.K; ++k) mag += std::abs(double(p.a_at(i, k)) * p.b_at(k, j));
      const double tol = 2.0 * (double(p.K) + 2.0) * 1.2e-7 *
                             (std::abs(p.alpha) * mag +
                              (p.beta == 0.0f ? 0.0 : std::abs(p.beta * p.c[i * p.ldc + j]))) +
                         1e-30;
      const double diff = std::abs(double(c_fast[i * p.ldc + j]) - c_ref[i * p.ldc + j]);
      if (!(diff <= tol)) ++bad;
    }
  // Padding between rows (and one past the end) must be left untouched.
  std::size_t touched = 0;
  for (std::size_t i = 0; i < c_fast.size(); ++i) {
    const bool inside = i / p.ldc < p.M && i % p.ldc < p.N;
    if (!inside && !(std::isnan(p.c[i]) ? std::isnan(c_fast[i]) : c_fast[i] == p.c[i]))
      ++touched;
  }
  INFO(what, " M=", p.M, " N=", p.N, " K=", p.K, " ta=", int(p.ta), " tb=", int(p.tb),
       " alpha=", p.alpha, " beta=", p.beta, " ldc=", p.ldc);
  CHECK(bad == 0);
  CHECK(touched == 0);
}

const std::vector<std::size_t> edge_sizes{1, 2, 3, 5, 7, 8, 9, 13, 15, 16, 17, 31, 33, 47, 49};

template <class Arch>
void gemm_arch(transpose ta, transpose tb, std::size_t M, std::size_t N, std::size_t K,
               float alpha, const float* A, std::size_t lda, const float* B, std::size_t ldb,
               float beta, float* C, std::size_t ldc) {
  qkit::detail::gemm_blocked<Arch>(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

}  // namespace

TEST_CASE("gemm: edge sizes, all transposes, against the reference") {
  std::mt19937 rng(42);
  for (auto ta : {transpose::no, transpose::yes})
    for (auto tb : {transpose::no, transpose::yes})
      for (std::size_t M : edge_sizes)
        for (std::size_t N : {1, 7, 16, 17, 48, 49, 97})
          for (std::size_t K : {1, 3, 16, 37}) {
            problem p(ta, tb, M, N, K, 1.0f, 0.0f, 0, rng);
            check_against_reference(p, qkit::gemm, "edge");
          }
}

TEST_CASE("gemm: alpha, beta and leading dimensions") {
  std::mt19937 rng(3);
  for (auto ta : {transpose::no, transpose::yes})
    for (auto tb : {transpose::no, transpose::yes})
      for (float alpha : {1.0f, -0.5f, 2.0f})
        for (float beta : {0.0f, 1.0f, 0.75f})
          for (std::size_t pad : {0, 3}) {
            problem p(ta, tb, 37, 53, 29, alpha, beta, pad, rng);
            check_against_reference(p, qkit::gemm, "alpha/beta");
          }
}

TEST_CASE("gemm: large and blocked shapes (K, M and N past one cache block)") {
  std::mt19937 rng(11);
  struct shape { std::size_t M, N, K; };
  for (auto s : {shape{130, 200, 300}, shape{1030, 70, 40}, shape{20, 3100, 9},
                 shape{64, 196, 576}, shape{257, 255, 513}})
    for (auto ta : {transpose::no, transpose::yes})
      for (auto tb : {transpose::no, transpose::yes}) {
        problem p(ta, tb, s.M, s.N, s.K, 1.0f, 0.5f, 1, rng);
        check_against_reference(p, qkit::gemm, "large");
      }
}

TEST_CASE("gemm: K == 0, alpha == 0 and empty outputs") {
  std::mt19937 rng(5);
  {
    problem p(transpose::no, transpose::no, 5, 6, 0, 1.0f, 0.0f, 0, rng);  // C = 0 (no NaN)
    check_against_reference(p, qkit::gemm, "K=0 beta=0");
    std::vector<float> c = p.c;
    qkit::gemm(p.ta, p.tb, p.M, p.N, 0, 1.0f, p.a.data(), p.lda, p.b.data(), p.ldb, 0.0f,
               c.data(), p.ldc);
    for (std::size_t i = 0; i < p.M * p.ldc; ++i) CHECK(c[i] == 0.0f);
  }
  {
    problem p(transpose::no, transpose::yes, 5, 6, 0, 1.0f, 2.0f, 0, rng);  // C = 2C
    check_against_reference(p, qkit::gemm, "K=0 beta=2");
  }
  {
    problem p(transpose::yes, transpose::no, 9, 4, 7, 0.0f, 0.5f, 0, rng);  // C = C/2
    check_against_reference(p, qkit::gemm, "alpha=0");
  }
  std::vector<float> c{42.0f};
  qkit::gemm(transpose::no, transpose::no, 0, 1, 3, 1.0f, nullptr, 3, nullptr, 1, 0.0f, c.data(),
             1);
  qkit::gemm(transpose::no, transpose::no, 1, 0, 3, 1.0f, nullptr, 3, nullptr, 1, 0.0f, c.data(),
             1);
  CHECK(c[0] == 42.0f);
}

TEST_CASE("gemm: beta == 0 ignores NaN already in C") {
  std::mt19937 rng(8);
  for (std::size_t M : {1, 8, 9, 100})
    for (std::size_t N : {1, 48, 50, 300}) {
      problem p(transpose::no, transpose::no, M, N, 20, 1.5f, 0.0f, 2, rng);  // C is all NaN
      std::vector<float> c = p.c;
      qkit::gemm(p.ta, p.tb, M, N, p.K, p.alpha, p.a.data(), p.lda, p.b.data(), p.ldb, 0.0f,
                 c.data(), p.ldc);
      std::size_t nan = 0;
      for (std::size_t i = 0; i < M; ++i)
        for (std::size_t j = 0; j < N; ++j) nan += std::isnan(c[i * p.ldc + j]);
      CHECK(nan == 0);
    }
}

TEST_CASE("gemm: narrower SIMD targets' kernels (AVX2+FMA, SSE2) agree with the reference") {
  std::mt19937 rng(21);
  for (auto ta : {transpose::no, transpose::yes})
    for (auto tb : {transpose::no, transpose::yes})
      for (std::size_t M : {1, 5, 6, 7, 13, 70})
        for (std::size_t N : {1, 8, 15, 17, 33, 300})
          for (std::size_t K : {1, 9, 260}) {
            problem p(ta, tb, M, N, K, 0.5f, M % 2 ? 0.0f : 1.25f, 1, rng);
#if XSIMD_WITH_FMA3_AVX2
            check_against_reference(p, gemm_arch<xsimd::fma3<xsimd::avx2>>, "avx2+fma");
#endif
#if XSIMD_WITH_SSE2
            check_against_reference(p, gemm_arch<xsimd::sse2>, "sse2");
#endif
          }
  // More rows than one packed block of A holds (the 6-row tile does not divide 1024).
  problem p(transpose::no, transpose::yes, 1100, 20, 5, 1.0f, 0.0f, 0, rng);
#if XSIMD_WITH_FMA3_AVX2
  check_against_reference(p, gemm_arch<xsimd::fma3<xsimd::avx2>>, "avx2+fma");
#endif
#if XSIMD_WITH_SSE2
  check_against_reference(p, gemm_arch<xsimd::sse2>, "sse2");
#endif
}

TEST_CASE("gemm: results are bit-identical for 1, 2 and 3 threads") {
  std::mt19937 rng(99);
  struct shape { std::size_t M, N, K; };
  for (auto s : {shape{300, 500, 270}, shape{64, 12544, 144}, shape{1100, 90, 33},
                 shape{64, 288, 3000}})
    for (auto ta : {transpose::no, transpose::yes})
      for (auto tb : {transpose::no, transpose::yes}) {
        problem p(ta, tb, s.M, s.N, s.K, 1.0f, 0.5f, 0, rng);
        std::vector<std::vector<float>> results;
        for (std::size_t threads : {1, 2, 3}) {
          qkit::set_num_threads(threads);
          std::vector<float> c = p.c;
          qkit::gemm(ta, tb, s.M, s.N, s.K, p.alpha, p.a.data(), p.lda, p.b.data(), p.ldb,
                     p.beta, c.data(), p.ldc);
          results.push_back(std::move(c));
        }
        qkit::set_num_threads(0);
        INFO("M=", s.M, " N=", s.N, " K=", s.K);
        CHECK(results[0] == results[1]);
        CHECK(results[0] == results[2]);
      }
}

TEST_CASE("gemm: concurrent calls from several user threads share the pool safely") {
  std::mt19937 rng(4);
  qkit::set_num_threads(2);
  std::vector<problem> problems;
  for (std::size_t i = 0; i < 4; ++i)
    problems.emplace_back(transpose::no, i % 2 ? transpose::yes : transpose::no, 150 + i, 170,
                          130, 1.0f, 0.5f, 0, rng);
  std::vector<std::vector<float>> expected, got(problems.size());
  for (const auto& p : problems) {
    std::vector<float> c = p.c;
    qkit::gemm(p.ta, p.tb, p.M, p.N, p.K, p.alpha, p.a.data(), p.lda, p.b.data(), p.ldb, p.beta,
               c.data(), p.ldc);
    expected.push_back(std::move(c));
  }
  std::vector<std::thread> callers;
  for (std::size_t t = 0; t < problems.size(); ++t)
    callers.emplace_back([&, t] {
      const auto& p = problems[t];
      for (int rep = 0; rep < 20; ++rep) {
        std::vector<float> c = p.c;
        qkit::gemm(p.ta, p.tb, p.M, p.N, p.K, p.alpha, p.a.data(), p.lda, p.b.data(), p.ldb,
                   p.beta, c.data(), p.ldc);
        if (rep == 0 || c != expected[t]) got[t] = std::move(c);
      }
    });
  for (auto& t : callers) t.join();
  qkit::set_num_threads(0);
  for (std::size_t t = 0; t < problems.size(); ++t) CHECK(got[t] == expected[t]);
}

TEST_CASE("gemm: leading dimensions shorter than a row are shape errors") {
  std::vector<float> a(64, 1.0f), b(64, 1.0f), c(64, 0.0f);
  // A is 4×3 (K = 3): lda 2 would make its rows overlap.
  CHECK_THROWS_AS(qkit::gemm(transpose::no, transpose::no, 4, 2, 3, 1.0f, a.data(), 2, b.data(),
                             2, 0.0f, c.data(), 2),
                  qkit::shape_error);
  // op(A) = Aᵀ with A stored 3×4: lda must cover M = 4.
  CHECK_THROWS_AS(qkit::gemm(transpose::yes, transpose::no, 4, 2, 3, 1.0f, a.data(), 3, b.data(),
                             2, 0.0f, c.data(), 2),
                  qkit::shape_error);
  CHECK_THROWS_AS(qkit::gemm(transpose::no, transpose::yes, 4, 2, 3, 1.0f, a.data(), 3, b.data(),
                             2, 0.0f, c.data(), 2),
                  qkit::shape_error);
  CHECK_THROWS_AS(qkit::gemm(transpose::no, transpose::no, 4, 2, 3, 1.0f, a.data(), 3, b.data(),
                             2, 0.0f, c.data(), 1),
                  qkit::shape_error);
  CHECK_NOTHROW(qkit::gemm(transpose::no, transpose::no, 4, 2, 3, 1.0f, a.data(), 3, b.data(), 2,
                           0.0f, c.data(), 2));
  CHECK(c[0] == 3.0f);
}

namespace {

// True when gemm() runs FMA kernels: an FMA build, or a baseline x86-64 build on a CPU with
// FMA (QKIT_RUNTIME_FMA). Only a CPU without FMA takes two-rounding kernels.
bool gemm_is_fused() {
#if QKIT_RUNTIME_FMA
  return qkit::detail::cpu_has_avx2_fma();
#elif defined(__FMA__)
  return true;
#else
  return false;
#endif
}

// gemm's arithmetic spelled out: K cut into blocks as gemm cuts it (about 256), each block's
// products summed by fused multiply-adds from 0 in k order, then added to C with one more.
// Every SIMD target and tile shape does exactly this per element, so the result is the same
// bits in every build; std::fma is correctly rounded everywhere.
void gemm_fused_reference(const problem& p, std::vector<float>& c) {
  const std::size_t KC = 256, blocks = std::max<std::size_t>(1, (p.K + KC / 2) / KC);
  const std::size_t kc_max = (p.K + blocks - 1) / blocks;
  for (std::size_t i = 0; i < p.M; ++i)
    for (std::size_t j = 0; j < p.N; ++j) {
      float cij = c[i * p.ldc + j];
      for (std::size_t pc = 0; pc < p.K; pc += kc_max) {
        float acc = 0.0f;
        for (std::size_t k = pc; k < std::min(p.K, pc + kc_max); ++k)
          acc = std::fma(p.a_at(i, k), p.b_at(k, j), acc);
        const float beta_k = pc == 0 ? p.beta : 1.0f;
        cij = beta_k == 0.0f ? p.alpha * acc : std::fma(p.alpha, acc, beta_k * cij);
      }
      c[i * p.ldc + j] = cij;
    }
}

}  // namespace

TEST_CASE("gemm: every element is the same chain of FMAs in every build (baseline or native)") {
  if (!gemm_is_fused()) {
    MESSAGE("this CPU has no FMA: gemm rounds products and sums separately here");
    return;
  }
  std::mt19937 rng(21);
  struct shape { std::size_t M, N, K; };
  for (auto s : {shape{1, 1, 1}, shape{7, 17, 37}, shape{13, 49, 300}, shape{64, 196, 576},
                 shape{33, 97, 700}})
    for (auto ta : {transpose::no, transpose::yes})
      for (auto tb : {transpose::no, transpose::yes})
        for (float beta : {0.0f, 0.75f}) {
          problem p(ta, tb, s.M, s.N, s.K, -0.5f, beta, 1, rng);
          std::vector<float> fast = p.c, ref = p.c;
          qkit::gemm(p.ta, p.tb, p.M, p.N, p.K, p.alpha, p.a.data(), p.lda, p.b.data(), p.ldb,
                     p.beta, fast.data(), p.ldc);
          gemm_fused_reference(p, ref);
          std::size_t differ = 0;
          for (std::size_t i = 0; i < p.M; ++i)
            for (std::size_t j = 0; j < p.N; ++j)
              differ += std::memcmp(&fast[i * p.ldc + j], &ref[i * p.ldc + j], sizeof(float)) != 0;
          INFO("M=", p.M, " N=", p.N, " K=", p.K, " ta=", int(ta), " tb=", int(tb), " beta=", beta);
          CHECK(differ == 0);
        }
}
}  // namespace unit_gemm
