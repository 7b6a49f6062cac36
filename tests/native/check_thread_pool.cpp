// Stress for edge::ThreadPool (thread_pool.h): millions of calls with 1 to 16 chunks of near-empty work, on
// more threads than cores and with every spin policy, so that workers wake late, claim across call
// boundaries and are descheduled mid-chunk. Each call must run every chunk exactly once and return only
// after all of them; a lost or doubled chunk, or a call that never returns, fails (the test has a timeout).
//
//     g++ -O2 -std=c++17 -pthread -I lightning_edge/runtime/csrc tests/native/check_thread_pool.cpp -o check_pool
//     ./check_pool THREADS SPIN SHARING CALLS       (SHARING: 0 dedicated, 1 shared, 2 auto)
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "thread_pool.h"

int main(int argc, char** argv) {
    if (argc != 5) {
        std::fprintf(stderr, "usage: %s THREADS SPIN SHARING CALLS\n", argv[0]);
        return 2;
    }
    const int threads = std::atoi(argv[1]), spin = std::atoi(argv[2]);
    const int sharing = std::atoi(argv[3]);
    if (sharing < 0 || sharing > 2) return 2;
    const long calls = std::atol(argv[4]);
    edge::ThreadPool pool(threads, spin, static_cast<edge::CpuSharing>(sharing));
    std::vector<std::atomic<int>> runs(16);
    std::vector<std::atomic<int>> by_thread(threads);
    unsigned state = 12345;
    long chunks_run = 0;
    for (long call = 0; call < calls; ++call) {
        state = state * 1103515245u + 12345u;
        const int chunks = 1 + static_cast<int>((state >> 16) % 16);
        for (int c = 0; c < chunks; ++c) runs[c].store(0, std::memory_order_relaxed);
        pool.run(chunks, [&](int chunk, int thread) {
            if (thread < 0 || thread >= threads) std::abort();
            runs[chunk].fetch_add(1, std::memory_order_relaxed);
            by_thread[thread].fetch_add(1, std::memory_order_relaxed);
        });
        for (int c = 0; c < chunks; ++c) {
            const int count = runs[c].load(std::memory_order_relaxed);
            if (count != 1) {
                std::printf("call %ld: chunk %d of %d ran %d times\n", call, c, chunks, count);
                return 1;
            }
        }
        chunks_run += chunks;
    }
    std::printf("threads %d spin %d sharing %d: %ld calls, %ld chunks, each exactly once; by thread:", threads, spin,
                sharing, calls, chunks_run);
    for (auto& count : by_thread) std::printf(" %d", count.load());
    std::printf("\n");
    return 0;
}
