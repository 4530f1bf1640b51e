// fuzz/fuzz_sim_config.cpp — libFuzzer target for the QuantSim config reader (AIMET's config
// JSON): any bytes must parse or give a qkit::error.
#include <qkit/sim/sim_config.hpp>

#include "fuzz_common.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto path = qkit_fuzz::input_file(data, size, ".json");
  qkit_fuzz::expect_only_qkit_errors([&] { (void)qkit::load_sim_config(path); });
  return 0;
}
