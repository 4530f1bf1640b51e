// fuzz/fuzz_npz.cpp — libFuzzer target for the .npz/.npy readers and nn::load_weights: any
// bytes must load or give a qkit::error, and a failed load must leave the model unchanged.
#include <cstring>

#include <qkit/io/npz.hpp>
#include <qkit/nn/activation.hpp>
#include <qkit/nn/batch_norm.hpp>
#include <qkit/nn/conv2d.hpp>
#include <qkit/nn/flatten.hpp>
#include <qkit/nn/linear.hpp>
#include <qkit/nn/pooling.hpp>
#include <qkit/nn/weights_file.hpp>

#include "fuzz_common.hpp"

namespace {
// The model of tests/io's PyTorch state_dict test, so the seed corpus can load into it.
auto small_model() {
  using namespace qkit::nn;
  return sequential(conv2d(1, 2, 2), batch_norm(2), relu{}, global_avg_pool{}, flatten{},
                    linear(2, 3));
}
bool same_bits(const qkit::io::npz_arrays& a, const qkit::io::npz_arrays& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (a[i].first != b[i].first || a[i].second.shape() != b[i].second.shape() ||
        std::memcmp(a[i].second.data(), b[i].second.data(), a[i].second.size() * 4) != 0)
      return false;
  return true;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto path = qkit_fuzz::input_file(data, size, ".npz");
  qkit_fuzz::expect_only_qkit_errors([&] { (void)qkit::io::load_npy(path); });
  qkit_fuzz::expect_only_qkit_errors([&] { (void)qkit::io::load_npz(path); });

  static auto model = small_model();
  const auto before = qkit::nn::state_dict(model);
  try {
    qkit::nn::load_weights(model, path);
  } catch (const qkit::error&) {
    if (!same_bits(before, qkit::nn::state_dict(model))) __builtin_trap();  // not all-or-nothing
  }
  return 0;
}
