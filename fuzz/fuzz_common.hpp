// fuzz/fuzz_common.hpp — what every qkit libFuzzer target shares: the input written to a
// temporary file (qkit's readers take paths, as users call them), and the rule that a reader
// may refuse input only with a qkit::error. Any other exception escapes the target, and
// libFuzzer reports it as a crash; sanitizers and -malloc_limit_mb catch the rest.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>

#include <unistd.h>

#include <qkit/error.hpp>

namespace qkit_fuzz {

/// Writes the bytes to `p`. Not std::filesystem::copy_file: it copies with sendfile, which
/// libFuzzer's timer signal can interrupt (EINTR escapes as a filesystem_error), and the
/// harness must not fail where the reader did not.
inline void write_file(const std::filesystem::path& p, const std::uint8_t* data, std::size_t size) {
  std::FILE* f = std::fopen(p.c_str(), "wb");
  if (!f) __builtin_trap();  // the harness itself is broken, not the reader
  if (size && std::fwrite(data, 1, size, f) != size) __builtin_trap();
  std::fclose(f);
}

/// A per-process temporary path with the given suffix, rewritten for every input.
inline std::filesystem::path input_file(const std::uint8_t* data, std::size_t size,
                                        const std::string& suffix) {
  static const std::filesystem::path dir = [] {
    auto d = std::filesystem::temp_directory_path() /
             ("qkit-fuzz-" + std::to_string(static_cast<long>(::getpid())));
    std::filesystem::create_directories(d);
    return d;
  }();
  const std::filesystem::path p = dir / ("input" + suffix);
  write_file(p, data, size);
  return p;
}

/// Runs `f`; a qkit::error is the reader's correct answer to bad input and is swallowed.
template <class F>
void expect_only_qkit_errors(F&& f) {
  try {
    f();
  } catch (const qkit::error&) {
  }
}

}  // namespace qkit_fuzz
