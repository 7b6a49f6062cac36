// A small persistent thread pool that stays steady when the CPU is shared.
//
// run(chunks, body) calls body(chunk, thread) once for every chunk in [0, chunks) and returns when all are
// done. The calling thread and the pool's workers claim chunks one at a time from a shared counter, so no
// chunk belongs to a thread in advance: when the OS deschedules a worker (another process wants the core,
// as on any phone or board), the others take the chunks it would have run, and the call waits at most for
// the chunk that worker holds, not for a whole scheduler slice. `thread` is the index of the thread that
// runs the chunk, for its scratch memory.
//
// Between calls a worker spins for `spin` pause instructions (layers are microseconds apart), then sleeps
// on a condition variable, so an idle Session costs no CPU; the caller wakes sleepers only when there are
// any. A woken worker needs tens of microseconds, and Linux tends to wake it on the caller's own core: if
// the caller then ran on alone, the worker would sit behind it and later spin there while the caller
// waits, a stall of a whole time slice. So after waking workers the caller, past its fair share, waits up
// to kWakeGrace for one of them to claim a chunk before it takes their chunks too.
//
// On a CPU that other busy processes share, two things go wrong: a woken worker may not run for a whole
// time slice, so the grace is lost on every call; and a worker spinning on the caller's core holds it. The
// shared policy answers both: a worker that missed the grace is taken as descheduled and the caller no
// longer waits for it until a worker is seen claiming again, and spinning workers give their core away
// every 256 pauses. CpuSharing chooses when it applies: always (kShared), never (kDedicated), or, the
// default, while the pool sees contention (kAuto). A sign of contention is a missed grace, or a wait at the
// end of a call far longer than the caller's own chunks took (a worker descheduled while it held one).
// Signs less than kSignMerge apart are one (a worker slow to wake misses the grace of several ops in a
// row); kContentionSigns of those, each less than kSignGap after the one before, turn the shared policy on,
// for kContentionHold seconds from the latest sign. A single slow wake (a worker that slept through another
// engine's burst, as in a benchmark alternating with one) does not: an idle CPU keeps the dedicated
// policy's latency, and a busy one gets the shared policy within a few calls.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <stdexcept>
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

// A monotonic clock in seconds, for the pool's wake grace and the engine's per-op timings.
inline double seconds_now() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// When the thread pool acts as if other busy processes share the CPU (see above).
enum class CpuSharing : int { kDedicated = 0, kShared = 1, kAuto = 2 };

class ThreadPool {
  public:
    using Body = std::function<void(int chunk, int thread)>;

    static constexpr int kDefaultSpin = 20000;
    // At most kMaxChunks chunks a call (the claim word below has 16 bits for them).
    static constexpr int kMaxChunks = 0xffff;
    static constexpr double kWakeGrace = 200e-6;
    // Under kAuto: how many signs of contention, each less than kSignGap seconds after the one before, turn
    // the shared policy on, and how long after the latest sign it stays on.
    static constexpr int kContentionSigns = 3;
    static constexpr double kSignMerge = 2e-3, kSignGap = 0.1, kContentionHold = 0.5;
    // A wait at a call's end counts as a sign when it exceeds this many of the caller's own chunk times,
    // plus kStallSlack (a chunk's time varies a little between threads).
    static constexpr double kStallChunks = 4.0, kStallSlack = 50e-6;

    explicit ThreadPool(int threads, int spin = kDefaultSpin, CpuSharing sharing = CpuSharing::kAuto)
        : size_(threads < 1 ? 1 : threads), spin_(spin < 0 ? 0 : spin), sharing_(sharing) {
        for (int t = 1; t < size_; ++t) workers_.emplace_back([this, t] { work(t); });
    }

    ~ThreadPool() {
        stopping_.store(true, std::memory_order_seq_cst);
        publish(nullptr, 0);
        for (auto& worker : workers_) worker.join();
    }

    int size() const { return size_; }
    int spin() const { return spin_; }
    CpuSharing sharing() const { return sharing_; }
    // Whether the shared policy applies now: always under kShared, while contention was seen lately under kAuto.
    bool contended() const { return shared_.load(std::memory_order_relaxed); }

    void run(int chunks, const Body& body) {
        if (chunks <= 0) return;
        if (chunks > kMaxChunks) throw std::invalid_argument("ThreadPool::run: more than 65535 chunks");
        if (size_ == 1 || chunks == 1) {
            for (int chunk = 0; chunk < chunks; ++chunk) body(chunk, 0);
            return;
        }
        const bool automatic = sharing_ == CpuSharing::kAuto;  // only this policy reads the clock
        const double start = automatic ? seconds_now() : 0.0;
        if (automatic && shared_.load(std::memory_order_relaxed) && start > contended_until_)
            shared_.store(false, std::memory_order_relaxed);  // no sign for kContentionHold: dedicated again
        done_.store(0, std::memory_order_relaxed);
        const bool woke = publish(&body, chunks);
        const uint32_t mine = caller_claims(chunks, woke);
        // What is left is in the workers' hands: chunks they have claimed and not finished.
        if (done_.load(std::memory_order_acquire) == chunks) return;
        const double claimed = automatic ? seconds_now() : 0.0;
        while (done_.load(std::memory_order_acquire) != chunks) EDGE_PAUSE();
        if (!automatic || mine == 0) return;
        const double waited = seconds_now() - claimed, own = (claimed - start) / mine;
        if (waited > kStallChunks * own + kStallSlack) contention_seen(claimed + waited);
    }

  private:
    // The claim word: the call's generation (high 32 bits), its chunk count and the next unclaimed chunk (16
    // bits each). A claim is a compare-and-swap of the whole word, so a worker that wakes late can never take
    // a chunk of a later call, nor judge a chunk by a later call's count.
    static uint64_t word(uint32_t generation, uint32_t chunks, uint32_t next) {
        return (uint64_t{generation} << 32) | (uint64_t{chunks} << 16) | next;
    }
    static uint32_t generation_of(uint64_t word) { return static_cast<uint32_t>(word >> 32); }
    static uint32_t chunks_of(uint64_t word) { return static_cast<uint32_t>((word >> 16) & 0xffff); }
    static uint32_t next_of(uint64_t word) { return static_cast<uint32_t>(word & 0xffff); }

    // Publishes a call; returns whether it had to wake sleeping workers.
    bool publish(const Body* body, int chunks) {
        body_.store(body, std::memory_order_relaxed);
        const uint32_t generation = ++calls_;
        claim_.store(word(generation, static_cast<uint32_t>(chunks), 0), std::memory_order_seq_cst);  // releases body_
        if (sleepers_.load(std::memory_order_seq_cst) == 0) return false;
        { std::lock_guard<std::mutex> lock(mutex_); }  // a sleeper is either before its check or waiting
        wake_.notify_all();
        return true;
    }

    // Claims the next chunk of the call in `current` (refreshed on failure); false when none is left.
    bool try_claim(uint64_t& current) {
        if (next_of(current) >= chunks_of(current)) return false;
        return claim_.compare_exchange_weak(current, current + 1, std::memory_order_acq_rel, std::memory_order_acquire);
    }

    void run_chunk(uint32_t chunk, int thread) {
        // The chunk is claimed and unfinished, so its call is live and body_ is still its body.
        (*body_.load(std::memory_order_relaxed))(static_cast<int>(chunk), thread);
        done_.fetch_add(1, std::memory_order_release);
    }

    // Under kAuto, a sign of contention at `now`: with the kContentionSigns - 1 before it close enough, or
    // while the shared policy is on, it holds from now for kContentionHold.
    void contention_seen(double now) {
        if (now - last_sign_ < kSignMerge) return;  // the same sign (last_sign_ is its first moment)
        signs_ = now - last_sign_ < kSignGap ? signs_ + 1 : 1;
        last_sign_ = now;
        if (signs_ < kContentionSigns && !shared_.load(std::memory_order_relaxed)) return;
        contended_until_ = now + kContentionHold;
        shared_.store(true, std::memory_order_relaxed);
    }

    // The caller's share of a call; returns how many chunks it ran.
    uint32_t caller_claims(int chunks, bool woke) {
        const uint32_t fair = static_cast<uint32_t>((chunks + size_ - 1) / size_);
        uint32_t mine = 0;
        bool waited = false;
        double deadline = 0.0;
        uint64_t current = claim_.load(std::memory_order_acquire);
        while (next_of(current) < chunks_of(current)) {
            const uint32_t next = next_of(current);
            if (next > mine) {
                workers_absent_ = false;  // a worker has claimed in this call
            } else if (woke && mine >= fair && !waited && !(workers_absent_ && shared_.load(std::memory_order_relaxed))) {
                const double now = seconds_now();
                if (deadline == 0.0) deadline = now + kWakeGrace;
                if (now < deadline) {
                    EDGE_PAUSE();
                    current = claim_.load(std::memory_order_acquire);
                    continue;
                }
                waited = true;
                workers_absent_ = true;
                if (sharing_ == CpuSharing::kAuto) contention_seen(now);
            }
            if (!try_claim(current)) continue;
            run_chunk(next, 0);
            ++mine;
            current = claim_.load(std::memory_order_acquire);
        }
        return mine;
    }

    void worker_claims(uint32_t generation, int thread) {
        uint64_t current = claim_.load(std::memory_order_acquire);
        while (generation_of(current) == generation && next_of(current) < chunks_of(current)) {
            const uint32_t next = next_of(current);
            if (!try_claim(current)) continue;
            run_chunk(next, thread);
            current = claim_.load(std::memory_order_acquire);
        }
    }

    uint32_t current_generation() const { return generation_of(claim_.load(std::memory_order_seq_cst)); }

    void work(int thread) {
        uint32_t seen = 0;
        for (;;) {
            uint32_t now = current_generation();
            for (int spins = 0; now == seen && spins < spin_; ++spins) {
                if ((spins & 255) == 255 && shared_.load(std::memory_order_relaxed)) std::this_thread::yield();
                else EDGE_PAUSE();
                now = generation_of(claim_.load(std::memory_order_acquire));
            }
            if (now == seen) {
                std::unique_lock<std::mutex> lock(mutex_);
                sleepers_.fetch_add(1, std::memory_order_seq_cst);
                wake_.wait(lock, [&] { return current_generation() != seen; });
                sleepers_.fetch_sub(1, std::memory_order_relaxed);
                now = current_generation();
            }
            seen = now;
            if (stopping_.load(std::memory_order_acquire)) return;
            worker_claims(now, thread);
        }
    }

    int size_;
    int spin_;
    CpuSharing sharing_;
    std::vector<std::thread> workers_;
    std::mutex mutex_;
    std::condition_variable wake_;
    uint32_t calls_ = 0;           // the caller's: generations published
    bool workers_absent_ = false;  // the caller's: did the last grace pass with no worker claiming?
    double contended_until_ = 0.0;  // the caller's, under kAuto: when the shared policy ends without a new sign
    double last_sign_ = -1.0;       // the caller's, under kAuto: when the latest sign was seen
    int signs_ = 0;                 // the caller's, under kAuto: signs in a row, each within kSignGap of the last
    // The claim word and the done count each on a cache line of their own: every claim writes the one and
    // every finished chunk the other.
    alignas(64) std::atomic<uint64_t> claim_{0};
    alignas(64) std::atomic<int> done_{0};
    alignas(64) std::atomic<const Body*> body_{nullptr};
    std::atomic<int> sleepers_{0};
    // Whether the shared policy applies: the caller writes it, spinning workers read it.
    std::atomic<bool> shared_{sharing_ == CpuSharing::kShared};
    std::atomic<bool> stopping_{false};
};

}  // namespace edge
