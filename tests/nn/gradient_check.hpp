// tests/nn/gradient_check.hpp — one finite-difference check for any layer or composition (in
// the spirit of dlib's test_layer): the analytic gradients of L = Σ r·f(x) (r a fixed random
// tensor) w.r.t. the input and every parameter are compared with central differences.
// Points where f has a kink inside ±eps (ReLU at 0, a max-pool switch) are detected from the
// function values alone — the two one-sided slopes disagree — and skipped; a report counts them
// so a test can bound how many were skipped.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <qkit/nn/graph.hpp>

namespace qkit_test {

struct gradient_check_options {
  float eps = 1e-2f;
  double rtol = 2e-2;
  double atol = 2e-3;
  /// Elements checked per tensor (all when the tensor is smaller; else a fixed random subset).
  std::size_t max_checks_per_tensor = 48;
  std::uint32_t seed = 1234;
};

struct gradient_check_report {
  std::size_t checked = 0, kinks_skipped = 0, failures = 0;
  std::string failure_text;
  bool ok(double max_skipped_fraction = 0.2) const {
    return failures == 0 && checked > 0 &&
           double(kinks_skipped) <= max_skipped_fraction * double(checked + kinks_skipped);
  }
};

inline qkit::tensor random_tensor(const qkit::shape_type& shape, std::mt19937& rng,
                                  float lo = -1.0f, float hi = 1.0f) {
  qkit::tensor t = qkit::tensor::from_shape(shape);
  std::uniform_real_distribution<float> d(lo, hi);
  for (auto& v : t) v = d(rng);
  return t;
}

namespace detail {
template <class Model>
double projected_loss(Model& model, const qkit::tensor& x, const qkit::tensor& r) {
  const qkit::tensor y = qkit::nn::forward(model, x);
  double s = 0.0;
  for (std::size_t i = 0; i < y.size(); ++i) s += double(y.data()[i]) * double(r.data()[i]);
  return s;
}

inline std::vector<std::size_t> pick(std::size_t n, std::size_t max, std::mt19937& rng) {
  std::vector<std::size_t> idx(n);
  for (std::size_t i = 0; i < n; ++i) idx[i] = i;
  if (n > max) {
    std::shuffle(idx.begin(), idx.end(), rng);
    idx.resize(max);
  }
  return idx;
}
}  // namespace detail

/// Checks d(Σ r·model(x))/dx and /dθ for every parameter that has a gradient. The model's
/// mode (training or inference) is left as the caller set it.
template <class Model>
gradient_check_report check_gradients(Model& model, qkit::tensor x,
                                      const gradient_check_options& o = {}) {
  std::mt19937 rng(o.seed);
  const qkit::tensor y = qkit::nn::forward(model, x);
  const qkit::tensor r = random_tensor(qkit::shape_type(y.shape().begin(), y.shape().end()), rng);
  qkit::nn::zero_grad(model);
  (void)qkit::nn::forward(model, x);
  const qkit::tensor dx = qkit::nn::backward(model, r);
  std::map<std::string, qkit::tensor> analytic;
  qkit::nn::for_each_parameter(model, [&](const std::string& n, qkit::tensor&, qkit::tensor* g) {
    if (g) analytic[n] = *g;
  });

  gradient_check_report rep;
  std::ostringstream failures;
  const auto check_tensor = [&](const std::string& what, float* data, std::size_t n,
                                const float* grad) {
    const double L0 = detail::projected_loss(model, x, r);
    for (std::size_t i : detail::pick(n, o.max_checks_per_tensor, rng)) {
      const float orig = data[i];
      const float xp = orig + o.eps, xm = orig - o.eps;
      data[i] = xp;
      const double Lp = detail::projected_loss(model, x, r);
      data[i] = xm;
      const double Lm = detail::projected_loss(model, x, r);
      data[i] = orig;
      const double up = (Lp - L0) / double(xp - orig), down = (L0 - Lm) / double(orig - xm);
      const double numeric = (Lp - Lm) / double(xp - xm);
      const double analytic_value = grad[i];
      const double scale = std::max(std::abs(up), std::abs(down));
      if (std::abs(up - down) > 0.1 * scale + o.atol) {
        ++rep.kinks_skipped;
        continue;
      }
      ++rep.checked;
      const double tol = o.atol + o.rtol * std::max(std::abs(numeric), std::abs(analytic_value));
      if (std::abs(numeric - analytic_value) > tol) {
        if (rep.failures < 8)
          failures << what << "[" << i << "]: analytic " << analytic_value << ", numeric "
                   << numeric << "\n";
        ++rep.failures;
      }
    }
  };
  check_tensor("input", x.data(), x.size(), dx.data());
  qkit::nn::for_each_parameter(model, [&](const std::string& n, qkit::tensor& v, qkit::tensor* g) {
    if (g) check_tensor(n, v.data(), v.size(), analytic.at(n).data());
  });
  rep.failure_text = failures.str();
  return rep;
}

}  // namespace qkit_test
