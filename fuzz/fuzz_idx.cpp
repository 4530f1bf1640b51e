// fuzz/fuzz_idx.cpp — libFuzzer target for the IDX readers (plain or gzip): any bytes must
// read or give a qkit::error, with no allocation beyond what the file can hold.
#include <qkit/io/idx.hpp>

#include "fuzz_common.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto path = qkit_fuzz::input_file(data, size, ".idx").string();
  qkit_fuzz::expect_only_qkit_errors([&] { (void)qkit::io::idx_item_count(path); });
  qkit_fuzz::expect_only_qkit_errors([&] { (void)qkit::io::read_idx_images(path); });
  qkit_fuzz::expect_only_qkit_errors([&] { (void)qkit::io::read_idx_images(path, 2); });
  qkit_fuzz::expect_only_qkit_errors([&] { (void)qkit::io::read_idx_labels(path); });
  qkit_fuzz::expect_only_qkit_errors([&] { (void)qkit::io::read_idx_labels(path, 3); });
  return 0;
}
