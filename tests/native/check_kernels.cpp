// Native check of every kernel path this binary can run against the scalar kernels, byte for byte, on
// random convolutions (any shape, groups, stride, padding, block, zero points, fused residual add),
// Winograd against the direct conv, and depthwise; then the engine core without Python: a plan with every
// registered op kind built from Attributes and run on each path, and the plan checks a bad file relies on.
// The scalar path is itself checked against the numpy reference by the Python tests; this binary is what
// runs the NEON path, cross-compiled for aarch64 and run under qemu-user (tests/test_native_kernels.py).
#include <cstdio>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "conv_driver.h"
#include "cpu_features.h"
#include "engine.h"

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

// A quantize -> conv 3x3 -> depthwise 3x3/2 -> conv 1x1 + residual -> add -> max pool -> average pool ->
// dequantize plan with random weights, packed for one path, and the arrays it names.
struct Plan {
    std::vector<OpDescription> ops;
    std::vector<size_t> sizes{3 * 9 * 9, 8 * 9 * 9, 8 * 5 * 5, 8 * 5 * 5, 8 * 5 * 5, 8 * 2 * 2, 8};
    std::vector<std::vector<int16_t>> conv_weights;
    std::vector<std::vector<int32_t>> ints;
    std::vector<std::vector<float>> floats;
    ArrayTable arrays;
};

Grid random_grid() { return Grid{0.01f * uniform(5, 10), uniform(100, 150), 0, 255}; }

Attributes conv_op(Plan& p, const std::string& name, int in_hw, int in_c, int out_c, int kernel, int input, int output,
                   bool k_major, std::mt19937& weights_rng) {
    ConvOp c{};
    c.in_h = c.in_w = c.out_h = c.out_w = in_hw, c.in_c = in_c, c.out_c = out_c;
    c.kernel_h = c.kernel_w = kernel, c.stride_h = c.stride_w = 1, c.pad_top = c.pad_left = kernel / 2;
    c.groups = 1, c.block = 8;
    derive_conv_fields(c);
    std::vector<int8_t> codes(static_cast<size_t>(out_c) * c.taps * in_c);
    for (auto& v : codes) v = static_cast<int8_t>(std::uniform_int_distribution<int>(-128, 127)(weights_rng));
    p.conv_weights.push_back(pack(c, codes, k_major));
    p.ints.emplace_back(out_c), p.floats.emplace_back(out_c);
    for (int i = 0; i < out_c; ++i)
        p.ints.back()[i] = std::uniform_int_distribution<int>(-20000, 20000)(weights_rng),
        p.floats.back()[i] = 1.0f / std::uniform_int_distribution<int>(300, 3000)(weights_rng);
    p.arrays[name + ".w"] = {p.conv_weights.back().data(), Dtype::Int16, p.conv_weights.back().size()};
    p.arrays[name + ".b"] = {p.ints.back().data(), Dtype::Int32, p.ints.back().size()};
    p.arrays[name + ".m"] = {p.floats.back().data(), Dtype::Float32, p.floats.back().size()};
    Attributes a;
    a.set_int("in_h", in_hw).set_int("in_w", in_hw).set_int("in_c", in_c).set_int("out_h", in_hw).set_int("out_w", in_hw);
    a.set_int("out_c", out_c).set_int("kernel_h", kernel).set_int("kernel_w", kernel).set_int("stride_h", 1).set_int("stride_w", 1);
    a.set_int("pad_top", kernel / 2).set_int("pad_left", kernel / 2).set_int("groups", 1).set_int("block", 8);
    a.set_string("weights", name + ".w").set_string("bias", name + ".b").set_string("multiplier", name + ".m");
    a.set_grid("input_grid", random_grid()).set_grid("output_grid", random_grid());
    a.set_int("input", input).set_int("output", output);
    return a;
}

Plan make_plan(bool k_major) {
    Plan p;
    p.ints.reserve(16);  // `taps` below stays a valid reference while the plan grows
    std::mt19937 weights_rng(99);  // every path gets the same weights and grids
    std::mt19937 saved = rng;
    rng.seed(7);
    auto add = [&](const char* kind, Attributes a) { p.ops.push_back({kind, std::move(a)}); };
    add("quantize", Attributes().set_int("channels", 3).set_int("height", 9).set_int("width", 9).set_grid("grid", random_grid()).set_int("output", 0));
    add("conv", conv_op(p, "a", 9, 3, 8, 3, 0, 1, k_major, weights_rng));
    p.ints.emplace_back(9 * 8), p.ints.emplace_back(8), p.floats.emplace_back(8);
    std::vector<int32_t>& taps = p.ints[p.ints.size() - 2];
    for (auto& v : taps) v = uniform(-128, 127);
    for (auto& v : p.ints.back()) v = uniform(-2000, 2000);
    for (auto& v : p.floats.back()) v = 1.0f / uniform(200, 2000);
    p.arrays["d.w"] = {taps.data(), Dtype::Int32, taps.size()};
    p.arrays["d.b"] = {p.ints.back().data(), Dtype::Int32, 8};
    p.arrays["d.m"] = {p.floats.back().data(), Dtype::Float32, 8};
    add("depthwise", Attributes().set_int("in_h", 9).set_int("in_w", 9).set_int("channels", 8).set_int("out_h", 5).set_int("out_w", 5)
        .set_int("kernel_h", 3).set_int("kernel_w", 3).set_int("stride_h", 2).set_int("stride_w", 2).set_int("pad_top", 1).set_int("pad_left", 1)
        .set_string("weights", "d.w").set_string("bias", "d.b").set_string("multiplier", "d.m")
        .set_grid("input_grid", random_grid()).set_grid("output_grid", random_grid()).set_int("input", 1).set_int("output", 2));
    Attributes residual = conv_op(p, "b", 5, 8, 8, 1, 2, 3, k_major, weights_rng);
    residual.set_int("skip", 2).set_grid("skip_grid", random_grid()).set_grid("sum_grid", random_grid());
    add("conv", residual);
    add("add", Attributes().set_int("size", 200).set_int("input", 3).set_int("skip", 2).set_int("output", 4)
        .set_grid("input_grid", random_grid()).set_grid("skip_grid", random_grid()).set_grid("output_grid", random_grid()));
    add("max_pool", Attributes().set_int("channels", 8).set_int("height", 5).set_int("width", 5).set_int("out_h", 2).set_int("out_w", 2)
        .set_int("kernel_h", 2).set_int("kernel_w", 2).set_int("stride_h", 2).set_int("stride_w", 2).set_int("pad_top", 0).set_int("pad_left", 0)
        .set_int("input", 4).set_int("output", 5));
    add("average_pool", Attributes().set_int("channels", 8).set_int("height", 2).set_int("width", 2).set_float("multiplier", 0.2)
        .set_grid("input_grid", random_grid()).set_grid("output_grid", random_grid()).set_int("input", 5).set_int("output", 6));
    add("dequantize", Attributes().set_int("channels", 8).set_int("height", 1).set_int("width", 1).set_grid("grid", random_grid()).set_int("input", 6));
    rng = saved;
    return p;
}

// Every uint8 tensor the plan writes, then its float output, on `kernels` with `threads` threads, on a
// fixed batch of 3.
std::vector<float> run_plan(const std::string& kernels, int threads) {
    Plan p = make_plan(kernels == "neon");
    Engine engine(p.ops, p.sizes, p.arrays, threads, kernels);
    std::mt19937 input_rng(5);
    std::normal_distribution<float> normal(0.0f, 2.0f);
    std::vector<float> x(3 * 3 * 9 * 9), out(3 * 8, -1.0f), seen;
    for (auto& v : x) v = normal(input_rng);
    engine.trace(x.data(), 3, out.data(), [&](int, const uint8_t* codes, size_t bytes) { seen.insert(seen.end(), codes, codes + bytes); });
    seen.insert(seen.end(), out.begin(), out.end());
    return seen;
}

// Whether building `p` on the scalar path throws std::invalid_argument with `message` in it.
bool refuses(const Plan& p, const std::string& message) {
    try {
        Engine engine(p.ops, p.sizes, p.arrays, 1, "scalar");
    } catch (const std::invalid_argument& error) {
        if (std::string(error.what()).find(message) != std::string::npos) return true;
        std::printf("expected '%s', got '%s'\n", message.c_str(), error.what());
        return false;
    }
    std::printf("expected '%s', the plan was accepted\n", message.c_str());
    return false;
}

// The engine core on every path against scalar, and its checks; returns the number of failures.
int check_engine() {
    int failures = 0;
    const std::vector<std::string> kinds = registered_operators();
    const std::vector<std::string> expected{"add", "average_pool", "conv", "depthwise", "dequantize", "max_pool", "quantize"};
    if (kinds != expected) {
        std::printf("registered op kinds: %zu, not the 7 the engine has (static registration lost at link time?)\n", kinds.size());
        ++failures;
    }
    const std::vector<float> reference = run_plan("scalar", 1);
    if (run_plan("scalar", 3) != reference) {
        std::printf("engine: scalar on 3 threads differs from 1 thread\n");
        ++failures;
    }
    std::printf("engine plan (%zu op kinds) on scalar", kinds.size());
    for (const std::string& kernels : available_kernels()) {
        if (kernels == "scalar") continue;
        std::printf(", %s", kernels.c_str());
        if (run_plan(kernels, 2) != reference) {
            std::printf(" (differs from scalar)");
            ++failures;
        }
    }
    Plan bad = make_plan(false);
    bad.ops[1].kind = "winograd9";
    failures += !refuses(bad, "unknown op kind 'winograd9'");
    bad = make_plan(false);
    std::swap(bad.ops[1], bad.ops[2]);
    failures += !refuses(bad, "plan reads a tensor before it is written");
    bad = make_plan(false);
    bad.ops[1].attributes.set_string("bias", "a.m");
    failures += !refuses(bad, "tensor 'a.m' has the wrong dtype or layout");
    bad = make_plan(false);
    bad.ops[1].attributes.set_grid("output_grid", Grid{1.0f, 0, 0, 300});
    failures += !refuses(bad, "grid 'output_grid' is outside uint8");
    bad = make_plan(false);
    bad.sizes[1] += 1;
    failures += !refuses(bad, "tensor 'output' has 649 elements per sample, the op needs 648");
    bad = make_plan(false);
    bad.ops[2].attributes.set_float("kernel_h", 3.5);
    failures += !refuses(bad, "plan op field 'kernel_h' must be an integer");
    std::printf(": %d mismatches\n", failures);
    return failures;
}

}  // namespace

int main() {
    std::vector<std::pair<const Backend*, bool>> paths;  // backend, k-major weights
    if (neon_backend()) paths.push_back({neon_backend(), true});
    if (avx2_runnable()) paths.push_back({avx2_backend(), false});
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
    failures += check_engine();
    return failures ? 1 : 0;
}
