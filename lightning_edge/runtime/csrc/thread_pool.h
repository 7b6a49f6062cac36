// A small persistent thread pool: run(task) calls task(t) for t in [0, size) at once and returns when all
// are done. Workers spin briefly between calls (layers of a small network are tens of microseconds apart),
// then sleep, so an idle Session costs no CPU.
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define EDGE_PAUSE() _mm_pause()
#elif defined(__aarch64__)
#define EDGE_PAUSE() asm volatile("yield")
#else
#define EDGE_PAUSE() ((void)0)
#endif

namespace edge {

class ThreadPool {
  public:
    explicit ThreadPool(int threads) : size_(threads < 1 ? 1 : threads) {
        for (int t = 1; t < size_; ++t) workers_.emplace_back([this, t] { work(t); });
    }

    ~ThreadPool() {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            stopping_ = true;
            generation_.fetch_add(1, std::memory_order_release);
        }
        wake_.notify_all();
        for (auto& worker : workers_) worker.join();
    }

    int size() const { return size_; }

    void run(const std::function<void(int)>& task) {
        if (size_ == 1) {
            task(0);
            return;
        }
        task_ = &task;
        pending_.store(size_ - 1, std::memory_order_relaxed);
        {
            std::lock_guard<std::mutex> lock(mutex_);
            generation_.fetch_add(1, std::memory_order_release);
        }
        wake_.notify_all();
        task(0);
        while (pending_.load(std::memory_order_acquire) != 0) EDGE_PAUSE();
    }

  private:
    void work(int index) {
        unsigned seen = 0;
        for (;;) {
            unsigned now = generation_.load(std::memory_order_acquire);
            for (int spin = 0; now == seen && spin < 20000; ++spin) {
                EDGE_PAUSE();
                now = generation_.load(std::memory_order_acquire);
            }
            if (now == seen) {
                std::unique_lock<std::mutex> lock(mutex_);
                wake_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
                now = generation_.load(std::memory_order_acquire);
            }
            seen = now;
            if (stopping_) return;
            (*task_)(index);
            pending_.fetch_sub(1, std::memory_order_acq_rel);
        }
    }

    int size_;
    std::vector<std::thread> workers_;
    std::mutex mutex_;
    std::condition_variable wake_;
    std::atomic<unsigned> generation_{0};
    std::atomic<int> pending_{0};
    const std::function<void(int)>* task_ = nullptr;
    std::atomic<bool> stopping_{false};
};

}  // namespace edge
