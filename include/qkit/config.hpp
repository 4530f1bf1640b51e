// qkit/config.hpp — version shims for qkit's dependencies and the precondition macros.
// Differences between dependency versions (xsimd 8.1 vs later) are absorbed here, once,
// so that kernels never test versions themselves.
#pragma once

#include <cstddef>
#include <sstream>
#include <xsimd/xsimd.hpp>

#define QKIT_VERSION_MAJOR 0
#define QKIT_VERSION_MINOR 1
#define QKIT_VERSION_PATCH 0

namespace qkit {

/// The SIMD batch type qkit's kernels use: the widest architecture the translation unit was
/// compiled for (AVX-512 under -march=native on such a host, SSE2 at worst on x86-64).
template <class T>
using simd = xsimd::batch<T, xsimd::default_arch>;

/// Horizontal sum of a batch. xsimd 8.1 calls it hadd; later versions reduce_add.
template <class T, class A>
inline T reduce_sum(const xsimd::batch<T, A>& b) {
#if XSIMD_VERSION_MAJOR < 9
  return xsimd::hadd(b);
#else
  return xsimd::reduce_add(b);
#endif
}

}  // namespace qkit

/// Throws ErrorType with a message built by streaming the remaining arguments:
/// QKIT_THROW(qkit::shape_error, "layer ", name, ": expected ", a, ", got ", b);
#define QKIT_THROW(ErrorType, ...)                                   \
  do {                                                               \
    std::ostringstream qkit_msg_;                                    \
    ::qkit::detail::stream_all(qkit_msg_, __VA_ARGS__);              \
    throw ErrorType(qkit_msg_.str());                                \
  } while (false)

/// Checks a precondition once per call (never per element in a hot loop).
#define QKIT_PRECONDITION(cond, ErrorType, ...)                      \
  do {                                                               \
    if (!(cond)) QKIT_THROW(ErrorType, __VA_ARGS__);                 \
  } while (false)

namespace qkit::detail {
/// x, rounded to its type here: the compiler may not fuse the operation that produced x with
/// the one that uses it into an FMA. GCC fuses a*b+c by default (-ffp-contract=fast) wherever
/// the target has FMA — a user's bare -march=native — so encoding arithmetic written as a
/// product then a sum would round differently with the compiler flags. qkit::optimize passes
/// -ffp-contract=off; code that computes encodings wraps its products so users need not.
template <class T>
inline T rounded(T x) noexcept {
#if defined(__GNUC__) && defined(__SSE2__)
  __asm__("" : "+x"(x));  // x must sit in an SSE register, as a value of its own type
#elif defined(__GNUC__) && defined(__aarch64__)
  __asm__("" : "+w"(x));
#else
  volatile T v = x;
  x = v;
#endif
  return x;
}

template <class... Args>
inline void stream_all(std::ostringstream& os, const Args&... args) {
  (os << ... << args);
}
}  // namespace qkit::detail
