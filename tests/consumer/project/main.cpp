// Consumer smoke test: encode a range, quantize-dequantize, check the round trip.
#include <qkit/qkit.hpp>
#include <cmath>
#include <cstdio>
#include <vector>

int main() {
  const auto enc = qkit::encoding_from_range(-1.0, 1.0, 8, qkit::scheme::asymmetric);
  std::vector<float> x{-1.0f, -0.5f, 0.0f, 0.25f, 1.0f}, y(x.size());
  qkit::qdq(x.data(), y.data(), x.size(), enc);
  for (std::size_t i = 0; i < x.size(); ++i) {
    if (std::fabs(x[i] - y[i]) > enc.scale) {
      std::printf("consumer: qdq(%g) = %g is off by more than one step\n", x[i], y[i]);
      return 1;
    }
  }
  std::puts("consumer: ok");
  return 0;
}
