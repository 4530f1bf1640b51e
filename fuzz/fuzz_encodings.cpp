// fuzz/fuzz_encodings.cpp — libFuzzer target for AIMET encodings files: io::read_encodings,
// writing back what it accepted, and QuantSim::load_encodings into a small model's sim (all or
// nothing). Any bytes must load or give a qkit::error.
#include <qkit/io/encodings_file.hpp>
#include <qkit/nn/activation.hpp>
#include <qkit/nn/conv2d.hpp>
#include <qkit/nn/flatten.hpp>
#include <qkit/nn/linear.hpp>
#include <qkit/nn/pooling.hpp>
#include <qkit/sim/quantsim.hpp>

#include "fuzz_common.hpp"
#include "fuzz_model.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto path = qkit_fuzz::input_file(data, size, ".encodings");
  qkit_fuzz::expect_only_qkit_errors([&] {
    const qkit::io::encodings_file f = qkit::io::read_encodings(path);
    // What the reader accepts, the writer must take or refuse by name, in both formats.
    qkit_fuzz::expect_only_qkit_errors([&] {
      (void)qkit::io::encodings_from_json(
          qkit::io::encodings_to_json(f, qkit::io::format_version::v1_0_0));
    });
    qkit_fuzz::expect_only_qkit_errors([&] {
      (void)qkit::io::encodings_from_json(
          qkit::io::encodings_to_json(f, qkit::io::format_version::v0_6_1));
    });
  });
  static auto sim = qkit_fuzz::calibrated_sim();
  qkit_fuzz::expect_only_qkit_errors([&] { sim.load_encodings(path); });
  return 0;
}
