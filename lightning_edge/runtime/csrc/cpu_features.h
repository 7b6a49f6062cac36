// What this CPU and build can run, detected once per process: the instruction-set flags, the kernel paths
// they allow, the choice of path for a `kernels` name, and the measured int8 peak benchmarks compare to.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "kernels.h"

namespace edge {

// Instruction sets of the CPU running this process (false where the build is for another architecture).
struct CpuFeatures {
    bool avx2 = false, avx512f = false, avx512bw = false, avx512vl = false, avx512vnni = false, avx512_bf16 = false;
    bool avx512vbmi = false;
    bool neon = false;
    // Every flag by name, for printing (e.g. _engine.cpu_features() in a benchmark's report).
    std::vector<std::pair<std::string, bool>> named() const;
};

const CpuFeatures& cpu_features();

// Whether the AVX2 / AVX-512 VNNI kernels are built in and this CPU can run them.
bool avx2_runnable();
bool avx512_runnable();

// The backend `kernels` ('auto', 'avx512', 'avx2', 'neon', 'scalar') names on this CPU; std::invalid_argument
// saying which paths to use instead when the CPU or build lacks it.
const Backend& choose_backend(const std::string& kernels);

// Kernel paths this build and CPU can run, scalar first.
std::vector<std::string> available_kernels();

// Measured int8 peak of this CPU on `threads` threads for about `seconds`: 2 x multiply-adds per second
// (0 where neither the AVX2 nor the AVX-512 VNNI sequence runs here).
double int8_peak_ops(int threads, double seconds);

}  // namespace edge
