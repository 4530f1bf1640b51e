// qkit/nn/optimizer.hpp — SGD with momentum (and weight decay) and Adam, over a model's
// parameters by name (state is keyed by the parameter's full name, so it survives passes that
// replace tensors), plus the cosine learning-rate schedule. Updates are elementwise, so the
// thread count cannot change them.
#pragma once

#include <cmath>
#include <cstddef>
#include <numbers>
#include <string>
#include <unordered_map>

#include "../tensor/thread_pool.hpp"
#include "graph.hpp"

namespace qkit::nn {

namespace detail {
/// Runs f(i) over [0, n) split over the pool.
template <class F>
void for_each_index(std::size_t n, F&& f) {
  parallel_for(0, n, std::size_t{1} << 14, [&](std::size_t lo, std::size_t hi) {
    for (std::size_t i = lo; i < hi; ++i) f(i);
  });
}

inline void check_grad(const std::string& name, const tensor& value, const tensor& grad) {
  QKIT_PRECONDITION(grad.shape() == value.shape(), shape_error, "optimizer: gradient of '", name,
                    "' has shape ", shape_string(grad.shape()), ", parameter has ",
                    shape_string(value.shape()), " (call zero_grad after changing a shape)");
}
}  // namespace detail

struct sgd_options {
  float lr = 0.01f;
  float momentum = 0.9f;
  /// L2 penalty added to the gradient (PyTorch's SGD weight_decay).
  float weight_decay = 0.0f;
  bool nesterov = false;
};

/// v = momentum·v + (g + wd·w); w −= lr·v (or lr·(g + momentum·v) with Nesterov).
class sgd {
 public:
  explicit sgd(sgd_options o = {}) : o_(o) {}
  float lr() const { return o_.lr; }
  void set_lr(float lr) { o_.lr = lr; }
  const sgd_options& options() const { return o_; }

  template <class Model>
  void step(Model& model) {
    step_each([&](auto&& f) { for_each_parameter(model, f); });
  }

  /// One step over the parameters `for_each(f)` lists as f(name, value, grad-or-nullptr) —
  /// e.g. a QuantSim's learned ranges (quantsim::for_each_encoding_parameter).
  template <class ForEach>
  void step_each(ForEach&& for_each) {
    for_each([&](const std::string& name, tensor& w, tensor* g) {
      if (!g) return;
      detail::check_grad(name, w, *g);
      tensor& v = velocity_[name];
      if (v.shape() != w.shape()) {
        v = tensor::from_shape(w.shape());
        v.fill(0.0f);
      }
      float* wp = w.data();
      const float* gp = g->data();
      float* vp = v.data();
      const auto o = o_;
      detail::for_each_index(w.size(), [&](std::size_t i) {
        const float grad = gp[i] + o.weight_decay * wp[i];
        vp[i] = o.momentum * vp[i] + grad;
        wp[i] -= o.lr * (o.nesterov ? grad + o.momentum * vp[i] : vp[i]);
      });
    });
  }

 private:
  sgd_options o_;
  std::unordered_map<std::string, tensor> velocity_;
};

struct adam_options {
  float lr = 1e-3f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float epsilon = 1e-8f;
  /// Decoupled weight decay (AdamW): w −= lr·wd·w, apart from the adaptive step.
  float weight_decay = 0.0f;
};

/// Adam with bias correction (Kingma & Ba); AdamW-style decoupled weight decay.
class adam {
 public:
  explicit adam(adam_options o = {}) : o_(o) {}
  float lr() const { return o_.lr; }
  void set_lr(float lr) { o_.lr = lr; }
  const adam_options& options() const { return o_; }
  std::size_t steps() const { return t_; }

  template <class Model>
  void step(Model& model) {
    step_each([&](auto&& f) { for_each_parameter(model, f); });
  }

  /// One step (one count of t) over the parameters `for_each(f)` lists as f(name, value,
  /// grad-or-nullptr) — e.g. a QuantSim's learned ranges.
  template <class ForEach>
  void step_each(ForEach&& for_each) {
    ++t_;
    for_each([&](const std::string& name, tensor& w, tensor* g) {
      if (g) update(name, w, *g);
    });
  }

  /// One step of a single tensor that is not a model's parameter (AdaRound's rounding
  /// variables): the same update, with its own moments under `name`.
  void step(const std::string& name, tensor& w, const tensor& g) {
    ++t_;
    update(name, w, g);
  }

 private:
  void update(const std::string& name, tensor& w, const tensor& g) {
    detail::check_grad(name, w, g);
    const float c1 = 1.0f - float(std::pow(double(o_.beta1), double(t_)));
    const float c2 = 1.0f - float(std::pow(double(o_.beta2), double(t_)));
    auto& [m, v] = moments_[name];
    if (m.shape() != w.shape()) {
      m = tensor::from_shape(w.shape());
      m.fill(0.0f);
      v = m;
    }
    float* wp = w.data();
    const float* gp = g.data();
    float* mp = m.data();
    float* vp = v.data();
    const auto o = o_;
    detail::for_each_index(w.size(), [&](std::size_t i) {
      mp[i] = o.beta1 * mp[i] + (1.0f - o.beta1) * gp[i];
      vp[i] = o.beta2 * vp[i] + (1.0f - o.beta2) * gp[i] * gp[i];
      const float mhat = mp[i] / c1, vhat = vp[i] / c2;
      wp[i] -= o.lr * (mhat / (std::sqrt(vhat) + o.epsilon) + o.weight_decay * wp[i]);
    });
  }

  adam_options o_;
  std::size_t t_ = 0;
  std::unordered_map<std::string, std::pair<tensor, tensor>> moments_;
};

/// Cosine annealing from base_lr (step 0) to min_lr (step total).
inline float cosine_lr(float base_lr, std::size_t step, std::size_t total, float min_lr = 0.0f) {
  if (total == 0 || step >= total) return min_lr;
  const double t = double(step) / double(total);
  return float(min_lr + 0.5 * (base_lr - min_lr) * (1.0 + std::cos(std::numbers::pi * t)));
}

}  // namespace qkit::nn
