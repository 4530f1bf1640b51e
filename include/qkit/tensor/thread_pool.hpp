// qkit/tensor/thread_pool.hpp — the small thread pool every kernel splits its work over.
// Work is cut into contiguous chunks that depend only on the range and the thread count, and
// each output element is written by exactly one chunk, so results never depend on how many
// threads ran or which thread ran a chunk. Threads claim chunks, the caller included, so a
// worker the OS has not scheduled yet holds nothing up. Nested calls (a kernel inside a
// parallel region) run inline.
#pragma once

#include <algorithm>
#include <atomic>
#include <charconv>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "../config.hpp"
#include "../error.hpp"

namespace qkit {

/// The thread count `0` stands for: the environment variable QKIT_NUM_THREADS when it is set
/// (a whole number from 1 to 1024; anything else is a config_error naming it), otherwise every
/// hardware thread. Like OMP_NUM_THREADS, it lets whoever runs a program, e.g. a test runner
/// that already runs one process per core, choose without changing the program.
inline std::size_t default_thread_count() {
  if (const char* env = std::getenv("QKIT_NUM_THREADS"); env != nullptr) {
    const std::string v(env);
    std::size_t n = 0;
    const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
    if (ec != std::errc() || end != v.data() + v.size() || n < 1 || n > 1024)
      throw config_error("QKIT_NUM_THREADS is '" + v + "': expected a whole number of threads from 1 to 1024");
    return n;
  }
  return std::max(1u, std::thread::hardware_concurrency());
}

class thread_pool {
 public:
  explicit thread_pool(std::size_t threads) { resize(threads); }
  ~thread_pool() { stop(); }
  thread_pool(const thread_pool&) = delete;
  thread_pool& operator=(const thread_pool&) = delete;

  std::size_t size() const { return workers_.size() + 1; }

  /// Sets the number of threads (the caller counts as one). 0 means the default:
  /// default_thread_count().
  void resize(std::size_t threads) {
    if (threads == 0) threads = default_thread_count();
    if (threads == size() && started_) return;
    std::lock_guard submit(submit_mutex_);
    stop();
    started_ = true;
    stopping_.store(false);
    state_.store(0);
    for (std::size_t i = 1; i < threads; ++i) workers_.emplace_back([this] { worker_loop(); });
  }

  /// Calls fn(lo, hi) over [begin, end) split into at most size() chunks of at least `grain`
  /// elements. Blocks until every chunk is done; rethrows the first exception.
  void parallel_for(std::size_t begin, std::size_t end, std::size_t grain,
                    const std::function<void(std::size_t, std::size_t)>& fn) {
    if (end <= begin) return;
    const std::size_t n = end - begin;
    grain = std::max<std::size_t>(grain, 1);
    // (At most 65,535 chunks: the count is held in 16 bits of state_.)
    const std::size_t chunks = std::min({size(), (n + grain - 1) / grain, std::size_t(0xffff)});
    if (chunks <= 1 || in_parallel_region()) {
      fn(begin, end);
      return;
    }
    // The pool runs one job at a time: callers on other threads (two user threads each
    // calling a kernel) wait their turn instead of overwriting each other's job.
    std::lock_guard submit(submit_mutex_);
    job_ = &fn;
    job_begin_ = begin;
    job_end_ = end;
    error_ = nullptr;
    done_.store(0, std::memory_order_relaxed);
    {
      // Under the mutex, so that a worker about to sleep cannot miss the new job. The release
      // store publishes the fields above to whichever thread claims a chunk.
      std::lock_guard g(mutex_);
      const std::uint64_t generation = (state_.load(std::memory_order_relaxed) >> 32) + 1;
      state_.store(generation << 32 | std::uint64_t(chunks) << 16, std::memory_order_release);
    }
    cv_.notify_all();
    // The caller claims chunks too, and takes every chunk no worker has claimed yet: a worker
    // that the OS has not scheduled (more runnable threads than cores, e.g. two programs using
    // qkit side by side) delays nothing, the caller runs its share instead. Which thread runs a
    // chunk never changes the chunk's bounds, so the results stay the same bits.
    run_claimable();
    // Wait only for chunks that are running on workers.
    if (!spin_until([this, chunks] { return done_.load(std::memory_order_acquire) == chunks; })) {
      std::unique_lock lock(mutex_);
      done_cv_.wait(lock, [this, chunks] { return done_.load(std::memory_order_acquire) == chunks; });
    }
    job_ = nullptr;
    if (error_) std::rethrow_exception(std::exchange(error_, nullptr));
  }

 private:
  static bool& in_parallel_region() {
    thread_local bool flag = false;
    return flag;
  }

  // Busy-waits up to about 50 microseconds for cond(); true if it became true.
  template <class Cond>
  static bool spin_until(Cond cond) {
    for (int i = 0; i < 4096; ++i) {
      if (cond()) return true;
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#endif
    }
    return cond();
  }

  // state_ packs the job's generation (high 32 bits), its chunk count (bits 16-31) and the next
  // unclaimed chunk (bits 0-15). A claim is a compare-exchange on the whole word, so a thread
  // holding a stale word (an older job's) cannot claim a chunk of a newer one, and the caller
  // rewrites the job's fields only after every chunk of the previous job is done.
  static std::size_t chunk_count(std::uint64_t s) { return std::size_t(s >> 16 & 0xffff); }
  static std::size_t next_chunk(std::uint64_t s) { return std::size_t(s & 0xffff); }

  // Claims and runs chunks of the current job until none is left.
  void run_claimable() {
    std::uint64_t s = state_.load(std::memory_order_acquire);
    while (next_chunk(s) < chunk_count(s)) {
      if (!state_.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel, std::memory_order_acquire)) continue;
      const std::size_t chunks = chunk_count(s);
      run_chunk(next_chunk(s), chunks);
      if (done_.fetch_add(1, std::memory_order_acq_rel) + 1 == chunks) {
        std::lock_guard g(mutex_);  // the caller may be about to sleep on done_cv_
        done_cv_.notify_one();
      }
      s = state_.load(std::memory_order_acquire);
    }
  }

  void run_chunk(std::size_t chunk, std::size_t chunks) {
    const std::size_t n = job_end_ - job_begin_;
    const std::size_t lo = job_begin_ + n * chunk / chunks;
    const std::size_t hi = job_begin_ + n * (chunk + 1) / chunks;
    in_parallel_region() = true;
    try {
      (*job_)(lo, hi);
    } catch (...) {
      std::lock_guard g(mutex_);
      if (!error_) error_ = std::current_exception();
    }
    in_parallel_region() = false;
  }

  void worker_loop() {
    std::uint64_t seen = 0;  // the generation this worker last looked at
    for (;;) {
      auto ready = [&] {
        return stopping_.load(std::memory_order_acquire) ||
               state_.load(std::memory_order_acquire) >> 32 != seen;
      };
      if (!spin_until(ready)) {
        std::unique_lock lock(mutex_);
        cv_.wait(lock, ready);
      }
      if (stopping_.load(std::memory_order_acquire)) return;
      seen = state_.load(std::memory_order_acquire) >> 32;
      run_claimable();
    }
  }

  void stop() {
    {
      std::lock_guard g(mutex_);
      stopping_.store(true, std::memory_order_release);
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
  }

  std::vector<std::thread> workers_;
  std::mutex mutex_, submit_mutex_;
  std::condition_variable cv_, done_cv_;
  const std::function<void(std::size_t, std::size_t)>* job_ = nullptr;
  std::size_t job_begin_ = 0, job_end_ = 0;
  std::atomic<std::uint64_t> state_{0};
  std::atomic<std::size_t> done_{0};
  std::atomic<bool> stopping_{false};
  std::exception_ptr error_;
  bool started_ = false;
};

/// The process-wide pool used by qkit's kernels.
inline thread_pool& default_thread_pool() {
  static thread_pool pool(0);
  return pool;
}

/// Sets how many threads qkit's kernels use (0: QKIT_NUM_THREADS if set, else all hardware
/// threads).
inline void set_num_threads(std::size_t n) { default_thread_pool().resize(n); }
inline std::size_t get_num_threads() { return default_thread_pool().size(); }

/// parallel_for on the default pool.
inline void parallel_for(std::size_t begin, std::size_t end, std::size_t grain,
                         const std::function<void(std::size_t, std::size_t)>& fn) {
  default_thread_pool().parallel_for(begin, end, grain, fn);
}

}  // namespace qkit
