// qkit/data/batch.hpp — a data set in consecutive batches, in order, for range-for:
//   for (const auto& b : qkit::data::batches(ds, 100)) use(b.samples, b.labels);
// Each batch copies its samples into a tensor of its own [B, ...] (a model's forward takes a
// whole tensor); its labels are a view into the data set's.
#pragma once

#include <algorithm>
#include <cstddef>
#include <iterator>
#include <span>

#include "../config.hpp"
#include "../error.hpp"
#include "../tensor/tensor.hpp"
#include "dataset.hpp"

namespace qkit::data {

/// Samples [B, ...] of the data set from index `first` on, and their labels (empty when the
/// data set has none).
struct batch {
  tensor samples;
  std::span<const label_type> labels;
  std::size_t first = 0;  ///< index in the data set of the batch's first sample

  std::size_t size() const { return samples.shape(0); }
};

/// The first `count` samples of a data set in batches of `batch_size` (the last one may be
/// smaller). Holds a pointer to the data set, which must outlive it.
class batch_range {
 public:
  class iterator {
   public:
    using iterator_concept = std::forward_iterator_tag;
    using iterator_category = std::input_iterator_tag;  // operator* returns a new batch
    using value_type = batch;
    using difference_type = std::ptrdiff_t;

    iterator() = default;

    batch operator*() const {
      const std::size_t n = std::min(batch_size_, end_ - pos_);
      shape_type shape = ds_->sample_shape();
      shape.insert(shape.begin(), n);
      batch b{tensor::from_shape(shape), {}, pos_};
      const std::size_t per = ds_->sample_size();
      std::copy_n(ds_->samples().data() + pos_ * per, n * per, b.samples.data());
      if (ds_->has_labels()) b.labels = ds_->labels().subspan(pos_, n);
      return b;
    }
    iterator& operator++() {
      pos_ = std::min(end_, pos_ + batch_size_);
      return *this;
    }
    iterator operator++(int) {
      iterator old = *this;
      ++*this;
      return old;
    }
    bool operator==(const iterator& o) const { return ds_ == o.ds_ && pos_ == o.pos_; }

   private:
    friend class batch_range;
    iterator(const dataset* ds, std::size_t pos, std::size_t end, std::size_t batch_size)
        : ds_(ds), pos_(pos), end_(end), batch_size_(batch_size) {}
    const dataset* ds_ = nullptr;
    std::size_t pos_ = 0, end_ = 0, batch_size_ = 1;
  };

  batch_range(const dataset& ds, std::size_t batch_size, std::size_t count)
      : ds_(&ds), count_(std::min(count, ds.size())), batch_size_(batch_size) {
    QKIT_PRECONDITION(batch_size > 0, data_error, "batches: the batch size is 0");
  }

  iterator begin() const { return {ds_, 0, count_, batch_size_}; }
  iterator end() const { return {ds_, count_, count_, batch_size_}; }

  /// Number of batches.
  std::size_t size() const { return (count_ + batch_size_ - 1) / batch_size_; }
  bool empty() const { return count_ == 0; }
  /// Number of samples over all batches.
  std::size_t samples() const { return count_; }
  std::size_t batch_size() const { return batch_size_; }

 private:
  const dataset* ds_;
  std::size_t count_, batch_size_;
};

/// All samples of `ds` in batches of `batch_size` (> 0). An empty data set gives no batches.
inline batch_range batches(const dataset& ds, std::size_t batch_size) {
  return batch_range(ds, batch_size, ds.size());
}
/// The first min(count, size) samples of `ds` in batches of `batch_size` (> 0).
inline batch_range batches(const dataset& ds, std::size_t batch_size, std::size_t count) {
  return batch_range(ds, batch_size, count);
}
// A temporary data set would be gone before the loop reads it.
batch_range batches(const dataset&&, std::size_t) = delete;
batch_range batches(const dataset&&, std::size_t, std::size_t) = delete;

}  // namespace qkit::data
