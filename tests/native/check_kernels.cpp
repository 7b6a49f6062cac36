// Native check of every kernel path this binary can run against the scalar kernels, byte for byte, on
// random convolutions (any shape, groups, stride, padding, block, zero points, fused residual add),
// Winograd against the direct conv, and depthwise. The scalar path is itself checked against the numpy
// reference by the Python tests; this binary is what runs the NEON path, cross-compiled for aarch64
// and run under qemu-user (tests/test_native_kernels.py).
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "conv_driver.h"

using namespace edge;

namespace {

std::mt19937 rng(1234);
int uniform(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); }

// codes [out][taps][group_in] -> the layout each path reads.
std::vector<int16_t> pack(const ConvOp& c, const std::vector<int8_t>& codes, bool k_major) {
    std::vector<int16_t> packed(static_cast<size_t>(c.groups) * c.blocks * c.depth_padded * c.block, 0);
    const int pairs = c.group_in_padded / 2;
    for (int g = 0; g < c.groups; ++g)
        for (int o = 0; o < c.group_out; ++o)
            for (int t = 0; t < c.taps; ++t)
                for (int i = 0; i < c.group_in; ++i) {
                    const int oc = g * c.group_out + o, b = o / c.block, j = o % c.block;
                    const int p = t * pairs + i / 2, k = i % 2;
                    const size_t base = (static_cast<size_t>(g) * c.blocks + b) * c.depth_padded * c.block;
                    const size_t at = k_major ? base + (static_cast<size_t>(p) * 2 + k) * c.block + j
                                              : base + (static_cast<size_t>(p) * c.block + j) * 2 + k;
                    packed[at] = codes[(static_cast<size_t>(oc) * c.taps + t) * c.group_in + i];
                }
    return packed;
}

struct Case {
    ConvOp op{};
    std::vector<uint8_t> input, skip;
    std::vector<int8_t> codes;
    std::vector<int32_t> bias;
    std::vector<float> multiplier;
    int batch = 1;
};

Case random_case(bool winograd) {
    Case k;
    ConvOp& c = k.op;
    k.batch = uniform(1, 3);
    c.groups = uniform(1, 3);
    c.group_in = uniform(1, 9), c.group_out = uniform(1, 20);
    c.in_c = c.groups * c.group_in, c.out_c = c.groups * c.group_out;
    c.kernel_h = winograd ? 3 : uniform(1, 3) * 2 - 1, c.kernel_w = winograd ? 3 : uniform(1, 3) * 2 - 1;
    c.stride_h = winograd ? 1 : uniform(1, 2), c.stride_w = winograd ? 1 : uniform(1, 2);
    c.pad_top = uniform(0, c.kernel_h - 1), c.pad_left = uniform(0, c.kernel_w - 1);
    c.in_h = uniform(c.kernel_h, 11), c.in_w = uniform(c.kernel_w, 11);
    const int pad_bottom = uniform(0, c.kernel_h - 1), pad_right = uniform(0, c.kernel_w - 1);
    c.out_h = (c.in_h + c.pad_top + pad_bottom - c.kernel_h) / c.stride_h + 1;
    c.out_w = (c.in_w + c.pad_left + pad_right - c.kernel_w) / c.stride_w + 1;
    c.block = uniform(0, 1) ? 16 : 8;
    c.winograd = winograd;
    derive_conv_fields(c);
    c.input_zero = uniform(0, 255), c.output_zero = uniform(0, 255);
    c.low = uniform(0, c.output_zero), c.high = uniform(c.output_zero, 255);
    c.residual = uniform(0, 1);
    c.conv_scale = 0.01f * uniform(1, 100), c.skip_scale = 0.01f * uniform(1, 100), c.sum_scale = 0.01f * uniform(1, 100);
    c.skip_zero = uniform(0, 255), c.sum_zero = uniform(0, 255), c.sum_low = 0, c.sum_high = 255;
    k.input.resize(static_cast<size_t>(k.batch) * c.in_h * c.in_w * c.in_c);
    for (auto& v : k.input) v = static_cast<uint8_t>(uniform(0, 255));
    k.skip.resize(static_cast<size_t>(k.batch) * c.out_h * c.out_w * c.out_c);
    for (auto& v : k.skip) v = static_cast<uint8_t>(uniform(0, 255));
    k.codes.resize(static_cast<size_t>(c.out_c) * c.taps * c.group_in);
    for (auto& v : k.codes) v = static_cast<int8_t>(uniform(-128, 127));
    k.bias.resize(c.out_c), k.multiplier.resize(c.out_c);
    for (int i = 0; i < c.out_c; ++i) k.bias[i] = uniform(-40000, 40000), k.multiplier[i] = 1.0f / uniform(500, 60000);
    c.bias = k.bias.data(), c.multiplier = k.multiplier.data();
    return k;
}

// Direct conv (or Winograd) of a case on one backend; weights packed for it.
std::vector<uint8_t> run_conv(const Backend& backend, Case k, bool k_major) {
    ConvOp& c = k.op;
    std::vector<int16_t> packed;
    if (c.winograd) {  // U = G' g G'^T per position, pairs layout (the scalar kernels')
        const int G[4][3] = {{2, 0, 0}, {1, 1, 1}, {1, -1, 1}, {0, 0, 2}};
        const size_t depth16 = 16 * static_cast<size_t>(c.group_in_padded);
        const int pairs = c.group_in_padded / 2;
        packed.assign(static_cast<size_t>(c.groups) * c.blocks * depth16 * c.block, 0);
        for (int g = 0; g < c.groups; ++g)
            for (int o = 0; o < c.group_out; ++o)
                for (int i = 0; i < c.group_in; ++i)
                    for (int r = 0; r < 4; ++r)
                        for (int s = 0; s < 4; ++s) {
                            const int oc = g * c.group_out + o, b = o / c.block, j = o % c.block, t = r * 4 + s;
                            int total = 0;
                            for (int y = 0; y < 3; ++y)
                                for (int x = 0; x < 3; ++x)
                                    total += G[r][y] * k.codes[(static_cast<size_t>(oc) * 9 + y * 3 + x) * c.group_in + i] * G[s][x];
                            const size_t base = (static_cast<size_t>(g) * c.blocks + b) * depth16 * c.block;
                            packed[base + (static_cast<size_t>(t * pairs + i / 2) * c.block + j) * 2 + i % 2] = static_cast<int16_t>(total);
                        }
    } else {
        packed = pack(c, k.codes, k_major);
    }
    c.weights = packed.data();
    std::vector<int16_t> wide(static_cast<size_t>(k.batch) * c.wide_h * c.wide_w * c.wide_c + 32);
    std::vector<uint8_t> output(k.skip.size(), 0);
    backend.widen(c, k.input.data(), wide.data(), 0, k.batch * c.wide_h);
    const uint8_t* skip = c.residual ? k.skip.data() : nullptr;
    if (c.winograd) {
        std::vector<uint8_t> scratch(winograd_scratch_bytes(c));
        backend.winograd(c, wide.data(), skip, output.data(), 0, k.batch * c.tiles_h * c.tiles_w, scratch.data());
    } else {
        backend.conv(c, wide.data(), skip, output.data(), Range{0, k.batch * c.out_h * c.out_w, 0, c.groups * c.blocks});
    }
    return output;
}

}  // namespace

int main() {
    std::vector<std::pair<const Backend*, bool>> paths;  // backend, k-major weights
    if (neon_backend()) paths.push_back({neon_backend(), true});
#if defined(__x86_64__)
    if (avx2_backend() && __builtin_cpu_supports("avx2")) paths.push_back({avx2_backend(), false});
#endif
    const Backend& scalar = scalar_backend();
    int cases = 0, failures = 0;
    for (int trial = 0; trial < 400; ++trial) {
        const bool winograd = trial % 4 == 3;
        Case k = random_case(winograd);
        const std::vector<uint8_t> expected = run_conv(scalar, k, false);
        if (winograd) {  // exact Winograd equals the direct conv
            Case direct = k;
            direct.op.winograd = false;
            derive_conv_fields(direct.op);
            if (run_conv(scalar, direct, false) != expected) {
                std::printf("case %d: scalar Winograd differs from the direct conv\n", trial);
                ++failures;
            }
        }
        for (auto [backend, k_major] : paths) {
            if (run_conv(*backend, k, k_major) != expected) {
                std::printf("case %d: %s conv differs from scalar (%dx%dx%d -> %d, k%dx%d s%d g%d b%d)\n", trial, backend->name,
                            k.op.in_h, k.op.in_w, k.op.in_c, k.op.out_c, k.op.kernel_h, k.op.kernel_w, k.op.stride_h, k.op.groups,
                            k.op.block);
                ++failures;
            }
        }
        ++cases;
    }
    std::printf("%d random convolutions on scalar", cases);
    for (auto [backend, k_major] : paths) std::printf(", %s", backend->name);
    std::printf(": %d mismatches\n", failures);
    return failures ? 1 : 0;
}
