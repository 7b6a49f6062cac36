// CPU detection and kernel-path choice (see cpu_features.h).
#include "cpu_features.h"

#include <algorithm>
#include <stdexcept>
#include <thread>
#include <vector>

#include "scheduler.h"

namespace edge {

namespace {

CpuFeatures detect() {
    CpuFeatures f;
#if defined(__x86_64__) || defined(_M_X64)
    __builtin_cpu_init();  // safe even before static constructors have run
    f.avx2 = __builtin_cpu_supports("avx2");
    f.avx512f = __builtin_cpu_supports("avx512f");
    f.avx512bw = __builtin_cpu_supports("avx512bw");
    f.avx512vl = __builtin_cpu_supports("avx512vl");
    f.avx512vnni = __builtin_cpu_supports("avx512vnni");
    f.avx512_bf16 = __builtin_cpu_supports("avx512bf16");
    f.avx512vbmi = __builtin_cpu_supports("avx512vbmi");
#elif defined(__aarch64__)
    f.neon = true;  // Advanced SIMD is part of every AArch64 CPU
#endif
    return f;
}

}  // namespace

std::vector<std::pair<std::string, bool>> CpuFeatures::named() const {
    return {{"avx2", avx2},           {"avx512f", avx512f},         {"avx512bw", avx512bw}, {"avx512vl", avx512vl},
            {"avx512vnni", avx512vnni}, {"avx512_bf16", avx512_bf16}, {"avx512vbmi", avx512vbmi},
            {"neon", neon}};
}

const CpuFeatures& cpu_features() {
    static const CpuFeatures features = detect();
    return features;
}

bool avx2_runnable() { return avx2_backend() && cpu_features().avx2; }

bool avx512_runnable() {
    const CpuFeatures& f = cpu_features();
    return avx512_backend() && f.avx2 && f.avx512f && f.avx512bw && f.avx512vl && f.avx512vnni;
}

const Backend& choose_backend(const std::string& kernels) {
    if (kernels == "scalar") return scalar_backend();
    if (kernels == "avx512") {
        if (!avx512_runnable())
            throw std::invalid_argument("kernels='avx512' needs an x86-64 CPU with AVX-512 VNNI; use 'auto', 'avx2' or 'scalar'");
        return *avx512_backend();
    }
    if (kernels == "avx2") {
        if (!avx2_runnable()) throw std::invalid_argument("kernels='avx2' needs an x86-64 CPU with AVX2; use 'auto' or 'scalar'");
        return *avx2_backend();
    }
    if (kernels == "neon") {
        if (!neon_backend()) throw std::invalid_argument("kernels='neon' needs an aarch64 build; use 'auto' or 'scalar'");
        return *neon_backend();
    }
    if (kernels != "auto")
        throw std::invalid_argument("kernels must be 'auto', 'avx512', 'avx2', 'neon' or 'scalar', not '" + kernels + "'");
    if (avx512_runnable()) return *avx512_backend();
    if (avx2_runnable()) return *avx2_backend();
    if (neon_backend()) return *neon_backend();
    return scalar_backend();
}

std::vector<std::string> available_kernels() {
    std::vector<std::string> names{"scalar"};
    if (avx2_runnable()) names.push_back("avx2");
    if (avx512_runnable()) names.push_back("avx512");
    if (neon_backend()) names.push_back("neon");
    return names;
}

double int8_peak_ops(int threads, double seconds) {
    const bool vnni = avx512_runnable(), avx2 = avx2_runnable();
    if (!vnni && !avx2) return 0.0;
    auto peak = vnni ? avx512_peak_macs : avx2_peak_macs;
    peak(1000000);  // warm up: clocks and the wide units
    // One chain per thread, all at once (plain threads: a pool's chunks may run one after another).
    const long iterations = static_cast<long>(20000000 * seconds);
    std::vector<double> done(static_cast<size_t>(std::max(threads, 1)));
    const double start = seconds_now();
    std::vector<std::thread> chains;
    for (size_t t = 1; t < done.size(); ++t) chains.emplace_back([&, t] { done[t] = peak(iterations); });
    done[0] = peak(iterations);
    for (auto& chain : chains) chain.join();
    const double elapsed = seconds_now() - start;
    double total = 0;
    for (double d : done) total += d;
    return 2.0 * total / elapsed;
}

}  // namespace edge
