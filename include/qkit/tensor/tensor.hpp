// qkit/tensor/tensor.hpp — the tensor type of qkit's engine: float32, row-major, NCHW.
// xtensor containers hold the data; kernels work on .data() with unaligned loads, so they are
// correct whether or not the user's build defines XTENSOR_USE_XSIMD (qkit never defines it).
#pragma once

#include <cstddef>
#include <sstream>
#include <string>
#include <vector>
#include <xtensor/xarray.hpp>

namespace qkit {

using tensor = xt::xarray<float, xt::layout_type::row_major>;
using shape_type = std::vector<std::size_t>;

/// Renders a shape as "[2, 3, 4]" for error messages.
template <class Shape>
inline std::string shape_string(const Shape& shape) {
  std::ostringstream os;
  os << '[';
  bool first = true;
  for (auto d : shape) {
    if (!first) os << ", ";
    os << d;
    first = false;
  }
  os << ']';
  return os.str();
}

}  // namespace qkit
