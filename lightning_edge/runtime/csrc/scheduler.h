// How an op's work is shared out over the engine's thread pool: contiguous shares of an index range, and a
// conv's split over pixel tiles or output-channel columns.
#pragma once

#include <algorithm>
#include <chrono>

#include "kernels.h"
#include "thread_pool.h"

namespace edge {

// A monotonic clock in seconds, for the engine's per-op timings.
inline double seconds_now() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

class Scheduler {
  public:
    explicit Scheduler(int threads) : pool_(threads) {}

    int threads() const { return pool_.size(); }

    // Splits [0, count) into the pool's contiguous shares (at least `grain` items each) and runs
    // body(begin, end, thread) on each.
    template <class Body>
    void parallel(int count, int grain, Body body) {
        const int threads = std::min(pool_.size(), std::max(1, count / std::max(grain, 1)));
        if (threads <= 1) {
            body(0, count, 0);
            return;
        }
        pool_.run([&](int t) {
            if (t >= threads) return;
            const int begin = static_cast<int>(static_cast<long>(count) * t / threads);
            const int end = static_cast<int>(static_cast<long>(count) * (t + 1) / threads);
            body(begin, end, t);
        });
    }

    // A conv's work shared out: whole tiles of `tile` pixels per thread when there are enough of them,
    // else (a small image, a linear layer) the (group, block) columns.
    template <class Run>
    void split_conv(int pixels, int tile, int columns, Run run) {
        const int tiles = (pixels + tile - 1) / tile;
        if (tiles >= 2 * pool_.size() || columns < pool_.size())
            parallel(tiles, 1, [&](int begin, int end, int) { run(Range{begin * tile, std::min(end * tile, pixels), 0, columns}); });
        else
            parallel(columns, 1, [&](int begin, int end, int) { run(Range{0, pixels, begin, end}); });
    }

  private:
    ThreadPool pool_;
};

}  // namespace edge
