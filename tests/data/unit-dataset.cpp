// Data sets and batches: construction and its errors, batching (sizes, order, labels, a
// count limit), first-n, chosen and seeded random subsets. Sample i holds values 1000·i + j,
// so every copied sample says where it came from.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <set>
#include <vector>

#include <qkit/data/batch.hpp>
#include <qkit/data/dataset.hpp>

namespace unit_dataset {  // the suite is one translation unit: tests/CMakeLists.txt

using qkit::tensor;
using namespace qkit::data;

namespace {

// N samples of shape [2, 3]; element j of sample i is 1000 i + j.
tensor numbered_samples(std::size_t n) {
  tensor x = tensor::from_shape({n, 2, 3});
  for (std::size_t i = 0; i < n; ++i)
    for (std::size_t j = 0; j < 6; ++j) x.data()[i * 6 + j] = float(1000 * i + j);
  return x;
}

// Which original sample row r of `samples` is, checking that all its elements agree.
std::size_t origin(const tensor& samples, std::size_t r) {
  const std::size_t i = std::size_t(samples.data()[r * 6]) / 1000;
  for (std::size_t j = 0; j < 6; ++j) REQUIRE(samples.data()[r * 6 + j] == float(1000 * i + j));
  return i;
}

std::vector<label_type> labels_for(std::size_t n) {
  std::vector<label_type> l(n);
  for (std::size_t i = 0; i < n; ++i) l[i] = label_type((7 * i) % 10);
  return l;
}

}  // namespace

TEST_CASE("dataset: sizes, shapes and labels") {
  const dataset ds(numbered_samples(5), labels_for(5));
  CHECK(ds.size() == 5);
  CHECK_FALSE(ds.empty());
  CHECK(ds.has_labels());
  CHECK(ds.sample_shape() == qkit::shape_type{2, 3});
  CHECK(ds.sample_size() == 6);
  CHECK(std::vector<label_type>(ds.labels().begin(), ds.labels().end()) == labels_for(5));

  const dataset unlabeled(numbered_samples(3));
  CHECK(unlabeled.size() == 3);
  CHECK_FALSE(unlabeled.has_labels());
  CHECK(unlabeled.labels().empty());

  const dataset none;
  CHECK(none.size() == 0);
  CHECK(none.empty());

  // Labels from bytes, as an IDX label file gives them.
  const std::vector<std::uint8_t> bytes{9, 0, 255};
  const dataset from_bytes(numbered_samples(3), bytes);
  CHECK(from_bytes.labels()[0] == 9);
  CHECK(from_bytes.labels()[2] == 255);
}

TEST_CASE("dataset: bad input is a data_error") {
  CHECK_THROWS_AS(dataset(numbered_samples(4), labels_for(3)), qkit::data_error);
  CHECK_THROWS_AS(dataset(numbered_samples(4), std::vector<label_type>{}), qkit::data_error);
  CHECK_THROWS_AS(dataset(numbered_samples(2), std::vector<label_type>{1, -1}), qkit::data_error);
  CHECK_THROWS_AS(dataset(numbered_samples(2), std::vector<std::int64_t>{1, std::int64_t(1) << 40}),
                  qkit::data_error);
  CHECK_THROWS_AS(dataset(numbered_samples(2), std::vector<int>{0, -3}), qkit::data_error);
  CHECK_THROWS_AS(dataset(tensor(3.0f)), qkit::data_error);  // 0-d: no sample axis
  CHECK_THROWS_WITH(dataset(numbered_samples(4), labels_for(3)),
                    doctest::Contains("3 labels for 4 samples"));
  // A data_error is a qkit::error, so callers can catch all of qkit's errors at once.
  CHECK_THROWS_AS(dataset(numbered_samples(4), labels_for(3)), qkit::error);
}

TEST_CASE("batches: consecutive, in order, the last one smaller, labels alongside") {
  const dataset ds(numbered_samples(10), labels_for(10));
  const auto range = batches(ds, 4);
  CHECK(range.size() == 3);
  CHECK(range.samples() == 10);
  std::vector<std::size_t> sizes, firsts, seen;
  std::vector<label_type> labels;
  for (const batch& b : range) {
    sizes.push_back(b.size());
    firsts.push_back(b.first);
    CHECK(b.samples.shape() == qkit::shape_type{b.size(), 2, 3});
    REQUIRE(b.labels.size() == b.size());
    for (std::size_t r = 0; r < b.size(); ++r) seen.push_back(origin(b.samples, r));
    labels.insert(labels.end(), b.labels.begin(), b.labels.end());
  }
  CHECK(sizes == std::vector<std::size_t>{4, 4, 2});
  CHECK(firsts == std::vector<std::size_t>{0, 4, 8});
  std::vector<std::size_t> all(10);
  std::iota(all.begin(), all.end(), std::size_t{0});
  CHECK(seen == all);
  CHECK(labels == labels_for(10));

  // A batch size that divides N, and one larger than N.
  sizes.clear();
  for (const batch& b : batches(ds, 5)) sizes.push_back(b.size());
  CHECK(sizes == std::vector<std::size_t>{5, 5});
  sizes.clear();
  for (const batch& b : batches(ds, 64)) sizes.push_back(b.size());
  CHECK(sizes == std::vector<std::size_t>{10});
}

TEST_CASE("batches: a count limits them to the first samples") {
  const dataset ds(numbered_samples(10));
  std::vector<std::size_t> sizes, seen;
  for (const batch& b : batches(ds, 4, 6)) {
    sizes.push_back(b.size());
    CHECK(b.labels.empty());
    for (std::size_t r = 0; r < b.size(); ++r) seen.push_back(origin(b.samples, r));
  }
  CHECK(sizes == std::vector<std::size_t>{4, 2});
  CHECK(seen == std::vector<std::size_t>{0, 1, 2, 3, 4, 5});
  CHECK(batches(ds, 4, 1000).samples() == 10);  // more than there are: all of them
  CHECK(batches(ds, 4, 0).empty());
}

TEST_CASE("batches: an empty data set gives none, a batch size of 0 is an error") {
  const dataset none;
  std::size_t count = 0;
  for (const batch& b : batches(none, 8)) count += 1 + b.size();
  CHECK(count == 0);
  CHECK(batches(none, 8).size() == 0);
  const dataset ds(numbered_samples(3));
  CHECK_THROWS_AS(batches(ds, 0), qkit::data_error);
  CHECK_THROWS_WITH(batches(ds, 0), doctest::Contains("batch size is 0"));
}

TEST_CASE("batches: the iterator is a forward iterator over the batches") {
  const dataset ds(numbered_samples(7));
  const auto range = batches(ds, 3);
  static_assert(std::forward_iterator<decltype(range.begin())>);
  CHECK(std::distance(range.begin(), range.end()) == 3);
  auto it = range.begin();
  const auto second = ++range.begin();
  CHECK(it != second);
  CHECK((*second).first == 3);
  CHECK((*it++).first == 0);
  CHECK(it == second);
}

TEST_CASE("first and subset copy the chosen samples and their labels") {
  const dataset ds(numbered_samples(6), labels_for(6));
  const dataset head = first(ds, 2);
  REQUIRE(head.size() == 2);
  CHECK(origin(head.samples(), 0) == 0);
  CHECK(origin(head.samples(), 1) == 1);
  CHECK(head.labels()[1] == labels_for(6)[1]);
  CHECK(first(ds, 100).size() == 6);
  CHECK(first(ds, 0).empty());
  CHECK(first(ds, 0).sample_shape() == qkit::shape_type{2, 3});

  const std::vector<std::size_t> pick{5, 0, 5, 3};
  const dataset s = subset(ds, pick);
  REQUIRE(s.size() == 4);
  for (std::size_t r = 0; r < pick.size(); ++r) {
    CHECK(origin(s.samples(), r) == pick[r]);
    CHECK(s.labels()[r] == labels_for(6)[pick[r]]);
  }
  const std::vector<std::size_t> zero{0};
  CHECK_FALSE(subset(dataset(numbered_samples(3)), zero).has_labels());
  const std::vector<std::size_t> bad{1, 6};
  CHECK_THROWS_AS(subset(ds, bad), qkit::data_error);
}

TEST_CASE("random_subset: distinct samples, fixed by the seed, a prefix for fewer") {
  const std::size_t N = 50;
  const dataset ds(numbered_samples(N), labels_for(N));
  const dataset a = random_subset(ds, 20, 2024);
  REQUIRE(a.size() == 20);
  std::vector<std::size_t> picked;
  for (std::size_t r = 0; r < a.size(); ++r) {
    picked.push_back(origin(a.samples(), r));
    CHECK(a.labels()[r] == labels_for(N)[picked.back()]);  // labels follow their samples
  }
  CHECK(std::set<std::size_t>(picked.begin(), picked.end()).size() == 20);  // no repeats
  std::vector<std::size_t> sorted = picked;
  std::sort(sorted.begin(), sorted.end());
  CHECK(sorted != picked);  // shuffled, not the first 20 or another sorted choice

  // The same seed chooses the same samples; another seed others.
  const dataset again = random_subset(ds, 20, 2024);
  CHECK(std::equal(a.samples().begin(), a.samples().end(), again.samples().begin()));
  const dataset other = random_subset(ds, 20, 7);
  CHECK_FALSE(std::equal(a.samples().begin(), a.samples().end(), other.samples().begin()));

  // Fewer samples of the same seed are the first ones of more (a calibration set of 10 is
  // part of the one of 20); asking for more than N gives every sample once.
  const dataset ten = random_subset(ds, 10, 2024);
  CHECK(std::equal(ten.samples().begin(), ten.samples().end(), a.samples().begin()));
  const dataset all = random_subset(ds, 1000, 2024);
  REQUIRE(all.size() == N);
  std::set<std::size_t> every;
  for (std::size_t r = 0; r < N; ++r) every.insert(origin(all.samples(), r));
  CHECK(every.size() == N);
}
}  // namespace unit_dataset
