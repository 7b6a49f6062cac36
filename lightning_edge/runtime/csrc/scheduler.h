// How an op's work is shared out over the engine's thread pool: an index range cut into contiguous chunks
// (a few per thread, claimed dynamically, so a descheduled thread's share is taken by the others), and a
// conv's split over pixel tiles or output-channel columns.
#pragma once

#include <algorithm>

#include "kernels.h"
#include "thread_pool.h"

namespace edge {

class Scheduler {
  public:
    // Chunks per thread: enough that the others can absorb a descheduled thread's share, few enough that
    // claiming them costs nothing beside the work.
    static constexpr int kChunksPerThread = 4;

    explicit Scheduler(int threads, int spin = ThreadPool::kDefaultSpin, CpuSharing sharing = CpuSharing::kAuto)
        : pool_(threads, spin, sharing) {}

    int threads() const { return pool_.size(); }
    int spin() const { return pool_.spin(); }
    CpuSharing sharing() const { return pool_.sharing(); }
    bool contended() const { return pool_.contended(); }

    // Cuts [0, count) into contiguous chunks of at least `grain` items and runs body(begin, end, thread)
    // on each; `thread` (below threads()) names the thread running it, for its scratch.
    template <class Body>
    void parallel(int count, int grain, Body body) {
        if (count <= 0) return;
        const int chunks = std::min(pool_.size() * kChunksPerThread, std::max(1, count / std::max(grain, 1)));
        if (chunks <= 1 || pool_.size() == 1) {
            body(0, count, 0);
            return;
        }
        pool_.run(chunks, [&](int chunk, int thread) {
            const int begin = static_cast<int>(static_cast<long>(count) * chunk / chunks);
            const int end = static_cast<int>(static_cast<long>(count) * (chunk + 1) / chunks);
            body(begin, end, thread);
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
