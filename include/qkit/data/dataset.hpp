// qkit/data/dataset.hpp — a data set held in memory: N samples in one tensor [N, ...] and,
// optionally, one integer class label per sample; and the subsets calibration and evaluation
// take from one (the first n, chosen indices, a seeded random choice).
#pragma once

#include <algorithm>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <numeric>
#include <random>
#include <ranges>
#include <span>
#include <utility>
#include <vector>

#include "../config.hpp"
#include "../error.hpp"
#include "../tensor/tensor.hpp"

namespace qkit::data {

/// A class label: an index into a model's outputs.
using label_type = std::int32_t;

/// Samples [N, ...] (one per row of the first axis) and either no labels or N labels, each
/// ≥ 0. An empty data set (N = 0) is valid; what needs data says so when it gets none.
class dataset {
 public:
  /// No samples.
  dataset() : samples_(tensor::from_shape({0})) {}

  /// Samples without labels (calibration data).
  explicit dataset(tensor samples) : samples_(std::move(samples)) { check_samples(); }

  /// Samples with one label each.
  dataset(tensor samples, std::vector<label_type> labels)
      : samples_(std::move(samples)), labels_(std::move(labels)) {
    check_samples();
    check_labels();
  }

  /// Samples with labels from any range of integers (e.g. the bytes of an IDX label file).
  template <std::ranges::input_range Labels>
    requires std::integral<std::ranges::range_value_t<Labels>>
  dataset(tensor samples, const Labels& labels) : samples_(std::move(samples)) {
    check_samples();
    std::size_t i = 0;
    for (const auto v : labels) {
      // Checked here: converting first would turn a too-large label into a negative one.
      QKIT_PRECONDITION(std::cmp_greater_equal(v, 0) &&
                            std::cmp_less_equal(v, std::numeric_limits<label_type>::max()),
                        data_error, "dataset: label ", +v, " of sample ", i,
                        " is not a class index (0 to ",
                        std::numeric_limits<label_type>::max(), ")");
      labels_.push_back(label_type(v));
      ++i;
    }
    check_labels();
  }

  /// Number of samples.
  std::size_t size() const { return samples_.shape(0); }
  bool empty() const { return size() == 0; }
  bool has_labels() const { return !labels_.empty(); }

  /// All samples, [N, ...].
  const tensor& samples() const { return samples_; }
  /// One label per sample, or none.
  std::span<const label_type> labels() const { return labels_; }

  /// The shape of one sample (the samples' shape without its first axis).
  shape_type sample_shape() const {
    return shape_type(samples_.shape().begin() + 1, samples_.shape().end());
  }
  /// Elements per sample.
  std::size_t sample_size() const {
    const auto s = sample_shape();
    return std::accumulate(s.begin(), s.end(), std::size_t{1}, std::multiplies<>());
  }

 private:
  void check_samples() const {
    QKIT_PRECONDITION(samples_.dimension() >= 1, data_error,
                      "dataset: samples have shape ", shape_string(samples_.shape()),
                      ", expected [N, ...] with one sample per row of the first axis");
  }
  void check_labels() const {
    if (labels_.empty() && size() == 0) return;
    QKIT_PRECONDITION(labels_.size() == size(), data_error, "dataset: ", labels_.size(),
                      " labels for ", size(), " samples");
    for (std::size_t i = 0; i < labels_.size(); ++i)
      QKIT_PRECONDITION(labels_[i] >= 0, data_error, "dataset: label ", labels_[i],
                        " of sample ", i, " is negative, expected a class index");
  }

  tensor samples_;
  std::vector<label_type> labels_;
};

/// The samples (and labels) at `indices`, in that order; an index may repeat.
inline dataset subset(const dataset& ds, std::span<const std::size_t> indices) {
  const std::size_t N = ds.size(), per = ds.sample_size();
  for (std::size_t i = 0; i < indices.size(); ++i)
    QKIT_PRECONDITION(indices[i] < N, data_error, "subset: index ", indices[i], " (entry ", i,
                      ") is outside a data set of ", N, " samples");
  shape_type shape = ds.sample_shape();
  shape.insert(shape.begin(), indices.size());
  tensor samples = tensor::from_shape(shape);
  const float* src = ds.samples().data();
  for (std::size_t i = 0; i < indices.size(); ++i)
    std::copy_n(src + indices[i] * per, per, samples.data() + i * per);
  if (!ds.has_labels()) return dataset(std::move(samples));
  std::vector<label_type> labels(indices.size());
  for (std::size_t i = 0; i < indices.size(); ++i) labels[i] = ds.labels()[indices[i]];
  return dataset(std::move(samples), std::move(labels));
}

/// The first min(n, size) samples.
inline dataset first(const dataset& ds, std::size_t n) {
  std::vector<std::size_t> idx(std::min(n, ds.size()));
  std::iota(idx.begin(), idx.end(), std::size_t{0});
  return subset(ds, idx);
}

/// min(n, size) samples chosen at random without repetition: the first n of the sample
/// indices shuffled by std::shuffle with std::mt19937(seed), in shuffled order. The same seed
/// gives the same samples (with the same standard library: std::shuffle's algorithm is its own).
inline dataset random_subset(const dataset& ds, std::size_t n, std::uint32_t seed) {
  std::vector<std::size_t> idx(ds.size());
  std::iota(idx.begin(), idx.end(), std::size_t{0});
  std::mt19937 rng(seed);
  std::shuffle(idx.begin(), idx.end(), rng);
  idx.resize(std::min(n, idx.size()));
  return subset(ds, idx);
}

}  // namespace qkit::data
