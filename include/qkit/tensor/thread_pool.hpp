// qkit/tensor/thread_pool.hpp — the small thread pool every kernel splits its work over.
// Work is cut into contiguous chunks that depend only on the range and the thread count, and
// each output element is written by exactly one chunk, so results never depend on how many
// threads ran. Nested calls (a kernel inside a parallel region) run inline.
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "../config.hpp"
#include "../error.hpp"

namespace qkit {

class thread_pool {
 public:
  explicit thread_pool(std::size_t threads) { resize(threads); }
  ~thread_pool() { stop(); }
  thread_pool(const thread_pool&) = delete;
  thread_pool& operator=(const thread_pool&) = delete;

  std::size_t size() const { return workers_.size() + 1; }

  /// Sets the number of threads (the caller counts as one). 0 means all hardware threads.
  void resize(std::size_t threads) {
    if (threads == 0) threads = std::max(1u, std::thread::hardware_concurrency());
    if (threads == size() && started_) return;
    std::lock_guard submit(submit_mutex_);
    stop();
    started_ = true;
    stopping_.store(false);
    generation_.store(0);
    for (std::size_t i = 1; i < threads; ++i) workers_.emplace_back([this, i] { worker_loop(i); });
  }

  /// Calls fn(lo, hi) over [begin, end) split into at most size() chunks of at least `grain`
  /// elements. Blocks until every chunk is done; rethrows the first exception.
  void parallel_for(std::size_t begin, std::size_t end, std::size_t grain,
                    const std::function<void(std::size_t, std::size_t)>& fn) {
    if (end <= begin) return;
    const std::size_t n = end - begin;
    grain = std::max<std::size_t>(grain, 1);
    const std::size_t chunks = std::min(size(), (n + grain - 1) / grain);
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
    job_chunks_ = chunks;
    error_ = nullptr;
    // Every worker acknowledges every job (running a chunk or not), so no worker can still be
    // reading this job's fields when the next one is written.
    pending_.store(workers_.size(), std::memory_order_relaxed);
    {
      std::lock_guard g(mutex_);  // a worker about to sleep cannot miss the new generation
      generation_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    run_chunk(0);
    // Kernels issue many short parallel regions back to back: spin briefly before sleeping.
    if (!spin_until([this] { return pending_.load(std::memory_order_acquire) == 0; })) {
      std::unique_lock lock(mutex_);
      done_cv_.wait(lock, [this] { return pending_.load(std::memory_order_acquire) == 0; });
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

  void run_chunk(std::size_t chunk) {
    const std::size_t n = job_end_ - job_begin_;
    const std::size_t lo = job_begin_ + n * chunk / job_chunks_;
    const std::size_t hi = job_begin_ + n * (chunk + 1) / job_chunks_;
    in_parallel_region() = true;
    try {
      (*job_)(lo, hi);
    } catch (...) {
      std::lock_guard g(mutex_);
      if (!error_) error_ = std::current_exception();
    }
    in_parallel_region() = false;
  }

  void worker_loop(std::size_t index) {
    std::size_t seen = 0;
    for (;;) {
      auto ready = [&] {
        return stopping_.load(std::memory_order_acquire) ||
               generation_.load(std::memory_order_acquire) != seen;
      };
      if (!spin_until(ready)) {
        std::unique_lock lock(mutex_);
        cv_.wait(lock, ready);
      }
      if (stopping_.load(std::memory_order_acquire)) return;
      seen = generation_.load(std::memory_order_acquire);
      if (index < job_chunks_) run_chunk(index);
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard g(mutex_);
        done_cv_.notify_one();
      }
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
  std::size_t job_begin_ = 0, job_end_ = 0, job_chunks_ = 0;
  std::atomic<std::size_t> pending_{0}, generation_{0};
  std::atomic<bool> stopping_{false};
  std::exception_ptr error_;
  bool started_ = false;
};

/// The process-wide pool used by qkit's kernels.
inline thread_pool& default_thread_pool() {
  static thread_pool pool(0);
  return pool;
}

/// Sets how many threads qkit's kernels use (0: all hardware threads).
inline void set_num_threads(std::size_t n) { default_thread_pool().resize(n); }
inline std::size_t get_num_threads() { return default_thread_pool().size(); }

/// parallel_for on the default pool.
inline void parallel_for(std::size_t begin, std::size_t end, std::size_t grain,
                         const std::function<void(std::size_t, std::size_t)>& fn) {
  default_thread_pool().parallel_for(begin, end, grain, fn);
}

}  // namespace qkit
