// Tests for qkit/tensor/thread_pool.hpp: the chunks a parallel_for runs are the ones its
// contract states (worked out here from the range, the grain and the thread count, whichever
// thread claims them), each runs exactly once, a chunk's exception reaches the caller and leaves
// the pool usable, and QKIT_NUM_THREADS sets the default thread count or is refused by name.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <qkit/error.hpp>
#include <qkit/tensor/thread_pool.hpp>

namespace unit_thread_pool {  // the suite is one translation unit: tests/CMakeLists.txt

namespace {

using chunk = std::pair<std::size_t, std::size_t>;

// The contract: min(threads, ceil(n / grain)) chunks, chunk c covering
// [begin + n·c/chunks, begin + n·(c+1)/chunks).
std::vector<chunk> expected_chunks(std::size_t begin, std::size_t end, std::size_t grain, std::size_t threads) {
  const std::size_t n = end - begin, chunks = std::min(threads, (n + grain - 1) / grain);
  if (chunks <= 1) return {{begin, end}};
  std::vector<chunk> out;
  for (std::size_t c = 0; c < chunks; ++c) out.emplace_back(begin + n * c / chunks, begin + n * (c + 1) / chunks);
  return out;
}

// Sets an environment variable for the lifetime of the object, then puts back what was there
// (ctest runs the suites with QKIT_NUM_THREADS set: scripts/test.sh).
class scoped_env {
 public:
  scoped_env(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    ::setenv(name, value, 1);
  }
  ~scoped_env() {
    if (old_) ::setenv(name_, old_->c_str(), 1);
    else ::unsetenv(name_);
  }
  scoped_env(const scoped_env&) = delete;
  scoped_env& operator=(const scoped_env&) = delete;

 private:
  const char* name_;
  std::optional<std::string> old_;
};

}  // namespace

TEST_CASE("thread pool: every call runs exactly the contract's chunks, once each, on 1 to 8 threads") {
  // 8 threads on this 2-core machine: more threads than cores, so workers are often not running
  // when a job is published and the caller claims their chunks.
  for (std::size_t threads : {1, 2, 3, 8}) {
    qkit::thread_pool pool(threads);
    REQUIRE(pool.size() == threads);
    for (int rep = 0; rep < 2000; ++rep) {
      const std::size_t begin = std::size_t(rep % 7), n = 1 + std::size_t(rep * 37 % 500), grain = 1 + std::size_t(rep % 13);
      std::mutex m;
      std::vector<chunk> ran;
      pool.parallel_for(begin, begin + n, grain, [&](std::size_t lo, std::size_t hi) {
        std::lock_guard g(m);
        ran.emplace_back(lo, hi);
      });
      std::sort(ran.begin(), ran.end());
      const auto want = expected_chunks(begin, begin + n, grain, threads);
      if (ran != want) {
        CAPTURE(threads);
        CAPTURE(begin);
        CAPTURE(n);
        CAPTURE(grain);
        CHECK(ran.size() == want.size());
        CHECK(ran == want);
        break;
      }
    }
  }
}

TEST_CASE("thread pool: a chunk's exception reaches the caller, the other chunks still run, the pool goes on") {
  qkit::thread_pool pool(4);
  for (int rep = 0; rep < 200; ++rep) {
    std::mutex m;
    std::set<std::size_t> started;
    const std::size_t bad = std::size_t(rep % 4) * 25;
    CHECK_THROWS_WITH_AS(pool.parallel_for(0, 100, 1,
                                           [&](std::size_t lo, std::size_t) {
                                             {
                                               std::lock_guard g(m);
                                               started.insert(lo);
                                             }
                                             if (lo == bad) throw std::runtime_error("chunk at " + std::to_string(lo));
                                           }),
                         ("chunk at " + std::to_string(bad)).c_str(), std::runtime_error);
    CHECK(started == std::set<std::size_t>{0, 25, 50, 75});
  }
  std::vector<int> hits(1000, 0);
  pool.parallel_for(0, hits.size(), 1, [&](std::size_t lo, std::size_t hi) {
    for (std::size_t i = lo; i < hi; ++i) ++hits[i];
  });
  CHECK(std::all_of(hits.begin(), hits.end(), [](int h) { return h == 1; }));
}

TEST_CASE("thread pool: nested parallel_for runs inline in the chunk that calls it") {
  qkit::thread_pool pool(2);
  std::mutex m;
  std::vector<chunk> inner;
  pool.parallel_for(0, 2, 1, [&](std::size_t lo, std::size_t) {
    pool.parallel_for(lo * 10, lo * 10 + 10, 1, [&](std::size_t a, std::size_t b) {
      std::lock_guard g(m);
      inner.emplace_back(a, b);
    });
  });
  std::sort(inner.begin(), inner.end());
  CHECK(inner == std::vector<chunk>{{0, 10}, {10, 20}});
}

TEST_CASE("thread pool: QKIT_NUM_THREADS sets the default thread count, and a bad value is refused by name") {
  {
    scoped_env env("QKIT_NUM_THREADS", "3");
    CHECK(qkit::default_thread_count() == 3);
    qkit::thread_pool pool(0);
    CHECK(pool.size() == 3);
    pool.resize(1);
    CHECK(pool.size() == 1);
    pool.resize(0);  // 0 is the default again, not every hardware thread
    CHECK(pool.size() == 3);
  }
  for (const char* bad : {"", "0", "-1", "two", "2x", " 2", "1025", "99999999999999999999999"}) {
    CAPTURE(std::string(bad));
    scoped_env env("QKIT_NUM_THREADS", bad);
    CHECK_THROWS_WITH_AS(qkit::default_thread_count(),
                         ("qkit: config error: QKIT_NUM_THREADS is '" + std::string(bad) +
                          "': expected a whole number of threads from 1 to 1024").c_str(),
                         qkit::config_error);
  }
  {
    scoped_env env("QKIT_NUM_THREADS", "1024");
    CHECK(qkit::default_thread_count() == 1024);
  }
}

}  // namespace unit_thread_pool
