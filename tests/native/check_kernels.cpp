// Native check of every kernel path this binary can run against the scalar kernels, byte for byte, on
// random convolutions (any shape, groups, stride, padding, block, zero points, fused residual add),
// Winograd against the direct conv, and depthwise; then the engine core without Python: a plan with every
// registered op kind built from Attributes and run on each path, and the plan checks a bad file relies on.
// The scalar path is itself checked against the numpy reference by the Python tests; this binary is what
// runs the NEON path, cross-compiled for aarch64 and run under qemu-user (tests/test_native_kernels.py).
// It prints a digest of every tensor of that plan and of each float64 function the float ops round to
// float32: ops without ISA-specific kernels run the same C++ everywhere, so what can differ on an ARM device
// is the libm and the CPU's conversions, and the test compares the x86 build's digests with the aarch64 one's.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "conv_driver.h"
#include "cpu_features.h"
#include "engine.h"
#include "float_math.h"
#include "fp16.h"

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

// A plan with every registered op kind but the FP32 ones (make_float_plan), with random weights packed for one
// path, and the arrays it names:
// quantize -> conv 3x3 -> depthwise 3x3/2 -> conv 1x1 + residual -> add -> max pool -> average pool, then
// table -> binary (x the pooled vector, broadcast) -> concat (one input requantized) -> gather (padding) ->
// window average pool, then a float region: to_float -> float_expression -> float_layer_norm ->
// float_softmax -> float_matmul -> float_reduce -> float32 gather -> to_codes, then dequantize.
struct Plan {
    std::vector<OpDescription> ops;
    std::vector<size_t> sizes{3 * 9 * 9, 8 * 9 * 9, 8 * 5 * 5, 8 * 5 * 5, 8 * 5 * 5, 8 * 2 * 2, 8,  // bytes per sample
                              8 * 5 * 5, 8 * 5 * 5, 16 * 5 * 5, 16 * 6 * 6, 16 * 3 * 3,
                              4 * 16 * 3 * 3, 4 * 16 * 3 * 3, 4 * 16 * 3 * 3, 4 * 16 * 3 * 3, 4 * 16 * 3 * 4, 4 * 16 * 3,
                              4 * 16 * 4, 16 * 4};
    std::vector<std::shared_ptr<const void>> owned;  // what `arrays` points into, shared by copies of the plan
    ArrayTable arrays;

    // Keeps `values` with the plan as the array `key`.
    template <class T>
    void keep(const std::string& key, std::vector<T> values) {
        auto stored = std::make_shared<const std::vector<T>>(std::move(values));
        arrays[key] = {stored->data(), dtype_of<T>(), stored->size()};
        owned.push_back(stored);
    }
};

Grid random_grid() { return Grid{0.01f * uniform(5, 10), uniform(100, 150), 0, 255}; }

// `count` values lo + (hi - lo) * u / 2^20 for uniform integers u: no libm on the way.
std::vector<float> random_floats(size_t count, float lo, float hi) {
    std::vector<float> values(count);
    for (auto& v : values) v = lo + (hi - lo) * static_cast<float>(uniform(0, 1 << 20)) / static_cast<float>(1 << 20);
    return values;
}

// The dequantization (q - zero) * scale of every code of each of `scales`, as a binary or float_expression
// operand's float32 table.
std::vector<float> dequantization_tables(const std::vector<float>& scales, int zero) {
    std::vector<float> tables;
    for (float scale : scales)
        for (int q = 0; q < 256; ++q) tables.push_back(static_cast<float>(q - zero) * scale);
    return tables;
}

// A list field as packing flattens it: key.count, key.0, key.1, ...
Attributes& set_list(Attributes& a, const std::string& key, const std::vector<int>& values) {
    a.set_int(key + ".count", static_cast<int>(values.size()));
    for (size_t i = 0; i < values.size(); ++i) a.set_int(list_item(key, static_cast<int>(i)), values[i]);
    return a;
}

Attributes conv_op(Plan& p, const std::string& name, int in_hw, int in_c, int out_c, int kernel, int input, int output,
                   bool k_major, std::mt19937& weights_rng) {
    ConvOp c{};
    c.in_h = c.in_w = c.out_h = c.out_w = in_hw, c.in_c = in_c, c.out_c = out_c;
    c.kernel_h = c.kernel_w = kernel, c.stride_h = c.stride_w = 1, c.pad_top = c.pad_left = kernel / 2;
    c.groups = 1, c.block = 8;
    derive_conv_fields(c);
    std::vector<int8_t> codes(static_cast<size_t>(out_c) * c.taps * in_c);
    for (auto& v : codes) v = static_cast<int8_t>(std::uniform_int_distribution<int>(-128, 127)(weights_rng));
    std::vector<int32_t> bias(out_c);
    std::vector<float> multiplier(out_c);
    for (int i = 0; i < out_c; ++i)
        bias[i] = std::uniform_int_distribution<int>(-20000, 20000)(weights_rng),
        multiplier[i] = 1.0f / std::uniform_int_distribution<int>(300, 3000)(weights_rng);
    p.keep(name + ".w", pack(c, codes, k_major));
    p.keep(name + ".b", bias);
    p.keep(name + ".m", multiplier);
    Attributes a;
    a.set_int("in_h", in_hw).set_int("in_w", in_hw).set_int("in_c", in_c).set_int("out_h", in_hw).set_int("out_w", in_hw);
    a.set_int("out_c", out_c).set_int("kernel_h", kernel).set_int("kernel_w", kernel).set_int("stride_h", 1).set_int("stride_w", 1);
    a.set_int("pad_top", kernel / 2).set_int("pad_left", kernel / 2).set_int("groups", 1).set_int("block", 8);
    a.set_string("weights", name + ".w").set_string("bias", name + ".b").set_string("multiplier", name + ".m");
    a.set_grid("input_grid", random_grid()).set_grid("output_grid", random_grid());
    a.set_int("input", input).set_int("output", output);
    return a;
}

// plan.FLOAT_OPCODES, in its order: the float_expression program below names its steps.
const std::vector<std::string> kFloatOpcodes{
    "input", "constant", "add", "sub", "mul", "div", "max", "min", "neg", "abs", "relu", "clip", "leaky_relu", "prelu",
    "hard_sigmoid", "hard_swish", "sigmoid", "tanh", "exp", "log", "sqrt", "erf", "pow", "softplus", "mish", "gelu",
    "reciprocal", "floor", "ceil"};

// f(x, y) for x the float32 input (16, 3, 3), y the pooled codes read NHWC through their table, c a
// per-channel constant broadcast over (3, 3) and k a scalar: sigmoid, tanh, erf, exp, both gelus, softplus,
// mish, log and sqrt (each in float64, rounded once), summed so that each one's bits reach the output.
Attributes float_expression_op(Plan& p, const Grid& codes_grid) {
    struct Step {
        const char* opcode;
        int dst, a, b;
        float imm0;
    };
    const std::vector<Step> steps{
        {"input", 0, 0, 0, 0}, {"input", 1, 1, 0, 0}, {"constant", 2, 0, 0, 0}, {"constant", 3, 1, 0, 0},
        {"mul", 4, 0, 2, 0},                                  // x * c
        {"sigmoid", 5, 4, 0, 0}, {"tanh", 6, 1, 0, 0}, {"erf", 7, 4, 0, 0},
        {"mul", 8, 4, 3, 0}, {"exp", 9, 8, 0, 0},             // exp(x * c * k)
        {"gelu", 10, 1, 0, 0}, {"gelu", 11, 4, 0, 1},         // imm0: 0 erf, 1 tanh
        {"softplus", 12, 1, 0, 0}, {"mish", 13, 8, 0, 0},
        {"log", 14, 12, 0, 0}, {"sqrt", 15, 5, 0, 0},         // of positive values: NaN signs are per CPU
        {"add", 16, 5, 6, 0}, {"add", 17, 16, 7, 0}, {"add", 18, 17, 9, 0}, {"add", 19, 18, 10, 0},
        {"sub", 20, 19, 11, 0}, {"add", 21, 20, 12, 0}, {"add", 22, 21, 13, 0}, {"add", 23, 22, 14, 0},
        {"add", 24, 23, 15, 0}};
    std::vector<int32_t> program;
    std::vector<float> immediates;
    for (const Step& s : steps) {
        const int op = static_cast<int>(std::find(kFloatOpcodes.begin(), kFloatOpcodes.end(), s.opcode) - kFloatOpcodes.begin());
        program.insert(program.end(), {op, s.dst, s.a, s.b, 0});
        immediates.insert(immediates.end(), {s.imm0, 0.0f});
    }
    p.keep("e.program", program);
    p.keep("e.immediates", immediates);
    p.keep("e.table", dequantization_tables({codes_grid.scale}, codes_grid.zero));
    p.keep("e.x_strides", std::vector<int32_t>{9, 3, 1});     // NCHW
    p.keep("e.y_strides", std::vector<int32_t>{1, 48, 16});   // NHWC codes read at (c, h, w)
    p.keep("e.c", random_floats(16, 0.5f, 1.5f));
    p.keep("e.c_strides", std::vector<int32_t>{1, 0, 0});
    p.keep("e.k", std::vector<float>{0.125f});
    p.keep("e.k_strides", std::vector<int32_t>{0, 0, 0});
    Attributes a;
    set_list(a, "inputs", {12, 11});
    set_list(a, "shape", {16, 3, 3});
    a.set_int("tables.count", 2).set_string("tables.1", "e.table");
    a.set_int("strides.count", 2).set_string("strides.0", "e.x_strides").set_string("strides.1", "e.y_strides");
    a.set_int("constants.count", 2).set_string("constants.0", "e.c").set_string("constants.1", "e.k");
    a.set_int("constant_strides.count", 2).set_string("constant_strides.0", "e.c_strides").set_string("constant_strides.1", "e.k_strides");
    a.set_string("program", "e.program").set_string("immediates", "e.immediates");
    a.set_int("registers", 25).set_int("result", 24).set_int("output", 13);
    return a;
}

Plan make_plan(bool k_major) {
    Plan p;
    std::mt19937 weights_rng(99);  // every path gets the same weights and grids
    std::mt19937 saved = rng;
    rng.seed(7);
    auto add = [&](const char* kind, Attributes a) { p.ops.push_back({kind, std::move(a)}); };
    add("quantize", Attributes().set_int("channels", 3).set_int("height", 9).set_int("width", 9).set_grid("grid", random_grid()).set_int("output", 0));
    add("conv", conv_op(p, "a", 9, 3, 8, 3, 0, 1, k_major, weights_rng));
    std::vector<int32_t> taps(9 * 8), bias(8);
    std::vector<float> multiplier(8);
    for (auto& v : taps) v = uniform(-128, 127);
    for (auto& v : bias) v = uniform(-2000, 2000);
    for (auto& v : multiplier) v = 1.0f / uniform(200, 2000);
    p.keep("d.w", taps);
    p.keep("d.b", bias);
    p.keep("d.m", multiplier);
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

    std::vector<uint8_t> tables(8 * 256), requantize(256), gather_table(256);
    for (auto& v : tables) v = static_cast<uint8_t>(uniform(0, 255));
    for (int q = 0; q < 256; ++q) requantize[q] = static_cast<uint8_t>(std::clamp((q - 120) * 7 / 10 + 128, 0, 255));
    for (auto& v : gather_table) v = static_cast<uint8_t>(uniform(0, 255));
    p.keep("t.tables", tables);
    add("table", Attributes().set_int("channels", 8).set_int("size", 200).set_int("table_count", 8).set_string("tables", "t.tables")
        .set_int("input", 4).set_int("output", 7));
    p.keep("b.input", dequantization_tables({0.05f}, 128));
    p.keep("b.other", dequantization_tables(random_floats(8, 0.02f, 0.1f), 120));
    Attributes binary = Attributes().set_string("operation", "mul").set_int("height", 5).set_int("width", 5).set_int("channels", 8)
        .set_string("input_table", "b.input").set_int("input_table_count", 1).set_string("other_table", "b.other")
        .set_int("other_table_count", 8).set_grid("output_grid", Grid{0.2f, 128, 0, 255}).set_int("input", 7).set_int("other", 6)
        .set_int("output", 8);
    set_list(binary, "input_shape", {5, 5, 8});
    add("binary", set_list(binary, "other_shape", {1, 1, 8}));
    p.keep("c.table", requantize);
    Attributes concat = Attributes().set_int("pixels", 25).set_int("channels", 16).set_int("tables.count", 2)
        .set_string("tables.1", "c.table").set_int("output", 9);
    set_list(concat, "inputs", {8, 3});
    add("concat", set_list(concat, "input_channels", {8, 8}));
    std::vector<int32_t> indices(16 * 6 * 6, 0), sources(16 * 6 * 6, -1);  // 5x5x16 padded by a row and column in front
    for (int y = 1; y < 6; ++y)
        for (int x = 1; x < 6; ++x)
            for (int c = 0; c < 16; ++c) {
                const int j = (y * 6 + x) * 16 + c;
                indices[j] = ((y - 1) * 5 + x - 1) * 16 + c, sources[j] = 0;
            }
    p.keep("g.indices", indices);
    p.keep("g.sources", sources);
    p.keep("g.table", gather_table);
    Attributes gather = Attributes().set_int("size", 16 * 6 * 6).set_int("input_sizes.0", 16 * 5 * 5).set_int("tables.count", 1)
        .set_string("tables.0", "g.table").set_string("indices", "g.indices").set_string("sources", "g.sources").set_int("pad", 17)
        .set_int("output", 10);
    add("gather", set_list(gather, "inputs", {9}));
    const Grid pooled = random_grid();
    add("window_average_pool", Attributes().set_int("channels", 16).set_int("height", 6).set_int("width", 6).set_int("out_h", 3)
        .set_int("out_w", 3).set_int("kernel_h", 3).set_int("kernel_w", 3).set_int("stride_h", 2).set_int("stride_w", 2)
        .set_int("pad_top", 1).set_int("pad_left", 1).set_int("pad_bottom", 1).set_int("pad_right", 1).set_int("count_include_pad", 1)
        .set_grid("input_grid", random_grid()).set_grid("output_grid", pooled).set_int("input", 10).set_int("output", 11));

    add("to_float", Attributes().set_int("channels", 16).set_int("height", 3).set_int("width", 3).set_grid("grid", pooled)
        .set_int("input", 11).set_int("output", 12));
    add("float_expression", float_expression_op(p, pooled));
    p.keep("l.scale", random_floats(9, 0.5f, 2.0f));
    p.keep("l.bias", random_floats(9, -1.0f, 1.0f));
    add("float_layer_norm", Attributes().set_int("outer", 16).set_int("inner", 9).set_float("epsilon", 1e-5)
        .set_string("scale", "l.scale").set_string("bias", "l.bias").set_int("input", 13).set_int("output", 14));
    add("float_softmax", Attributes().set_int("outer", 16).set_int("axis", 3).set_int("inner", 3).set_int("log", 0)
        .set_int("input", 14).set_int("output", 15));
    p.keep("m.b", random_floats(3 * 4, -1.0f, 1.0f));
    add("float_matmul", Attributes().set_int("batch", 16).set_int("m", 3).set_int("k", 3).set_int("n", 4).set_int("a", 15)
        .set_int("a_batch_stride", 9).set_string("b_constant", "m.b").set_int("b_batch_stride", 0).set_int("output", 16));
    Attributes reduce = Attributes().set_string("operation", "mean").set_int("input", 16).set_int("output", 17);
    set_list(reduce, "shape", {16, 3, 4});
    add("float_reduce", set_list(reduce, "axes", {2}));  // over n: softmax made every column of a sum to 1
    std::vector<int32_t> moved(16 * 4, 0), moved_sources(16 * 4, -1);  // (16, 3) -> (16, 4), a column of float32(1)
    for (int c = 0; c < 16; ++c)
        for (int j = 0; j < 3; ++j) moved[c * 4 + j] = c * 3 + j, moved_sources[c * 4 + j] = 0;
    p.keep("f.indices", moved);
    p.keep("f.sources", moved_sources);
    Attributes moves = Attributes().set_int("element_bytes", 4).set_int("size", 16 * 4).set_int("input_sizes.0", 16 * 3)
        .set_int("tables.count", 1).set_string("indices", "f.indices").set_string("sources", "f.sources").set_int("pad", 1)
        .set_int("output", 18);
    add("gather", set_list(moves, "inputs", {17}));
    const Grid result{0.005f, 128, 0, 255};
    add("to_codes", Attributes().set_int("channels", 16).set_int("height", 4).set_int("width", 1).set_grid("grid", result)
        .set_int("input", 18).set_int("output", 19));
    add("dequantize", Attributes().set_int("channels", 16).set_int("height", 4).set_int("width", 1).set_grid("grid", result).set_int("input", 19));
    rng = saved;
    return p;
}

// The float32 ends and layers of a plain FP32 file, which take the place of quantize and dequantize: float_input
// -> float_conv (3 -> 6 channels in 3 groups, 3x3 dilated by 2, stride 2, padded) -> bf16_conv (6 -> 6 in 2
// groups, 3x3 padded, its input added back and ReLU) -> fp16_conv (6 -> 6 in 3 groups, 3x3 padded, the
// bf16_conv's input added back, clamped to [0, 6]) -> float_pool max (3x3/2, a ceil-mode row) -> float_pool average (2x2/1, padding counted) -> two float_output ops: output 0 the average
// pool, output 1 the max pool (several outputs, written by index).
Plan make_float_plan() {
    Plan p;
    p.sizes = {4 * 3 * 9 * 9, 4 * 6 * 5 * 5, 4 * 6 * 3 * 3, 4 * 6 * 4 * 4, 4 * 6 * 5 * 5, 4 * 6 * 5 * 5};
    std::mt19937 saved = rng;
    rng.seed(11);
    auto add = [&](const char* kind, Attributes a) { p.ops.push_back({kind, std::move(a)}); };
    add("float_input", Attributes().set_int("channels", 3).set_int("height", 9).set_int("width", 9).set_int("output", 0));
    p.keep("fc.w", random_floats(6 * 1 * 3 * 3, -1.0f, 1.0f));
    p.keep("fc.b", random_floats(6, -0.5f, 0.5f));
    add("float_conv", Attributes().set_int("in_c", 3).set_int("in_h", 9).set_int("in_w", 9).set_int("out_c", 6).set_int("out_h", 5)
        .set_int("out_w", 5).set_int("groups", 3).set_int("kernel_h", 3).set_int("kernel_w", 3).set_int("stride_h", 2)
        .set_int("stride_w", 2).set_int("dilation_h", 2).set_int("dilation_w", 2).set_int("pad_top", 2).set_int("pad_left", 2)
        .set_string("weights", "fc.w").set_string("bias", "fc.b").set_int("input", 0).set_int("output", 1));
    auto pool = [](const char* operation, int height, int out, int kernel, int stride, int pad, int include_pad) {
        return Attributes().set_string("operation", operation).set_int("channels", 6).set_int("height", height)
            .set_int("width", height).set_int("out_h", out).set_int("out_w", out).set_int("kernel_h", kernel)
            .set_int("kernel_w", kernel).set_int("stride_h", stride).set_int("stride_w", stride).set_int("dilation_h", 1)
            .set_int("dilation_w", 1).set_int("pad_top", pad).set_int("pad_left", pad).set_int("pad_bottom", pad)
            .set_int("pad_right", pad).set_int("count_include_pad", include_pad);
    };
    p.keep("bc.w", random_floats(6 * 3 * 3 * 3, -1.0f, 1.0f));
    add("bf16_conv", Attributes().set_int("in_c", 6).set_int("in_h", 5).set_int("in_w", 5).set_int("out_c", 6).set_int("out_h", 5)
        .set_int("out_w", 5).set_int("groups", 2).set_int("kernel_h", 3).set_int("kernel_w", 3).set_int("stride_h", 1)
        .set_int("stride_w", 1).set_int("dilation_h", 1).set_int("dilation_w", 1).set_int("pad_top", 1).set_int("pad_left", 1)
        .set_string("weights", "bc.w").set_int("input", 1).set_int("skip", 1).set_float("low", 0.0f).set_int("output", 4));
    p.keep("hc.w", random_floats(6 * 2 * 3 * 3, -1.0f, 1.0f));
    p.keep("hc.b", random_floats(6, -0.5f, 0.5f));
    add("fp16_conv", Attributes().set_int("in_c", 6).set_int("in_h", 5).set_int("in_w", 5).set_int("out_c", 6).set_int("out_h", 5)
        .set_int("out_w", 5).set_int("groups", 3).set_int("kernel_h", 3).set_int("kernel_w", 3).set_int("stride_h", 1)
        .set_int("stride_w", 1).set_int("dilation_h", 1).set_int("dilation_w", 1).set_int("pad_top", 1).set_int("pad_left", 1)
        .set_string("weights", "hc.w").set_string("bias", "hc.b").set_int("input", 4).set_int("skip", 1)
        .set_float("low", 0.0f).set_float("high", 6.0f).set_int("output", 5));
    add("float_pool", pool("max", 5, 3, 3, 2, 1, 0).set_int("input", 5).set_int("output", 2));
    add("float_pool", pool("average", 3, 4, 2, 1, 1, 1).set_int("input", 2).set_int("output", 3));
    add("float_output", Attributes().set_int("channels", 6).set_int("height", 3).set_int("width", 3).set_int("input", 2)
        .set_int("index", 1));
    add("float_output", Attributes().set_int("channels", 6).set_int("height", 4).set_int("width", 4).set_int("input", 3)
        .set_int("index", 0));
    rng = saved;
    return p;
}

// What a plan run leaves, by name: every tensor it writes ("tensor <index>", the bytes of the whole batch,
// in op order), then its float output ("output").
using Trace = std::vector<std::pair<std::string, std::vector<uint8_t>>>;

// The trace of the plan on `kernels` with `threads` threads, on a fixed batch of 3 whose values come from
// integers only (std::normal_distribution calls logf, which could itself differ between the two builds).
// `float_plan`: the FP32 plan instead, its names prefixed "float ".
Trace run_plan(const std::string& kernels, int threads, bool float_plan = false) {
    Plan p = float_plan ? make_float_plan() : make_plan(kernels == "neon");
    Engine engine(p.ops, p.sizes, p.arrays, threads, kernels);
    std::mt19937 input_rng(5);
    std::vector<float> x(3 * 3 * 9 * 9), out(float_plan ? 3 * 6 * 4 * 4 : 3 * 16 * 4, -1.0f), second(3 * 6 * 3 * 3, -1.0f);
    for (auto& v : x) v = static_cast<float>(std::uniform_int_distribution<int>(-4000, 4000)(input_rng)) / 1000.0f;
    Trace trace;
    const std::string prefix = float_plan ? "float " : "";
    Engine::Outputs outputs{out.data()};
    if (float_plan) outputs.push_back(second.data());
    engine.trace(x.data(), 3, outputs, [&](int index, const uint8_t* data, size_t bytes) {
        trace.push_back({prefix + "tensor " + std::to_string(index), std::vector<uint8_t>(data, data + bytes)});
    });
    const auto* bytes = reinterpret_cast<const uint8_t*>(out.data());
    trace.push_back({prefix + "output", std::vector<uint8_t>(bytes, bytes + out.size() * sizeof(float))});
    if (float_plan) {
        bytes = reinterpret_cast<const uint8_t*>(second.data());
        trace.push_back({prefix + "output 1", std::vector<uint8_t>(bytes, bytes + second.size() * sizeof(float))});
    }
    return trace;
}

// 64-bit FNV-1a: the digest the x86 and aarch64 builds print for tests/test_native_kernels.py to compare.
uint64_t fnv1a(const uint8_t* data, size_t bytes) {
    uint64_t hash = 14695981039346656037ull;
    for (size_t i = 0; i < bytes; ++i) hash = (hash ^ data[i]) * 1099511628211ull;
    return hash;
}

// "function <name> <digest>" for each float64 function the float-region ops round to float32, on every
// 65536th float32 bit pattern and on [-16, 16] in steps of 1/1024: a libm that rounds one differently shows
// up by name. A NaN result hashes as one value: its sign is the CPU's (x86's default NaN is negative,
// AArch64's positive), which no op looks at.
void print_function_digests() {
    std::vector<float> xs;
    for (uint64_t bits = 0; bits < (uint64_t{1} << 32); bits += 65536) {
        const uint32_t pattern = static_cast<uint32_t>(bits);
        float v;
        std::memcpy(&v, &pattern, sizeof v);
        xs.push_back(v);
    }
    for (int i = -16 * 1024; i <= 16 * 1024; ++i) xs.push_back(static_cast<float>(i) / 1024.0f);
    const std::vector<std::pair<const char*, double (*)(double)>> functions{
        {"sigmoid", sigmoid}, {"tanh", [](double v) { return std::tanh(v); }}, {"exp", [](double v) { return std::exp(v); }},
        {"log", [](double v) { return std::log(v); }}, {"sqrt", [](double v) { return std::sqrt(v); }},
        {"erf", [](double v) { return std::erf(v); }}, {"pow_1.5", [](double v) { return std::pow(v, 1.5); }},
        {"softplus", softplus}, {"mish", mish}, {"gelu_erf", gelu_erf}, {"gelu_tanh", gelu_tanh}};
    for (const auto& [name, f] : functions) {
        std::vector<float> ys;
        for (float v : xs) {
            const double y = f(v);
            ys.push_back(std::isnan(y) ? std::numeric_limits<float>::quiet_NaN() : static_cast<float>(y));
        }
        const uint64_t digest = fnv1a(reinterpret_cast<const uint8_t*>(ys.data()), ys.size() * sizeof(float));
        std::printf("function %s %016llx\n", name, static_cast<unsigned long long>(digest));
    }
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

// The engine core on every path against scalar, and its checks; returns the number of failures. Prints the
// digests of the scalar run's tensors, which every other path matches byte for byte.
int check_engine() {
    int failures = 0;
    const std::vector<std::string> kinds = registered_operators();  // sorted
    std::set<std::string> used;
    for (const OpDescription& op : make_plan(false).ops) used.insert(op.kind);
    for (const OpDescription& op : make_float_plan().ops) used.insert(op.kind);
    if (std::vector<std::string>(used.begin(), used.end()) != kinds) {  // a kind without a case, or lost at link time
        std::printf("registered op kinds:");
        for (const std::string& kind : kinds) std::printf(" %s", kind.c_str());
        std::printf("\nthe plan's op kinds:");
        for (const std::string& kind : used) std::printf(" %s", kind.c_str());
        std::printf("\n");
        return 1;
    }
    const Trace reference = run_plan("scalar", 1), float_reference = run_plan("scalar", 1, true);
    for (const Trace* trace : {&reference, &float_reference})
        for (const auto& [name, bytes] : *trace)
            std::printf("%s %016llx\n", name.c_str(), static_cast<unsigned long long>(fnv1a(bytes.data(), bytes.size())));
    if (run_plan("scalar", 3) != reference || run_plan("scalar", 3, true) != float_reference) {
        std::printf("engine: scalar on 3 threads differs from 1 thread\n");
        ++failures;
    }
    // fp16_conv's kernel on the neon path: NEON's half arithmetic where the CPU has FEAT_FP16.
    std::printf("fp16 half arithmetic: %s\n", fp16_tile_neon() ? "neon" : fp16_tile_avx512() ? "avx512" : "emulated");
    std::printf("engine plan (%zu op kinds) on scalar", kinds.size());
    for (const std::string& kernels : available_kernels()) {
        if (kernels == "scalar") continue;
        std::printf(", %s", kernels.c_str());
        if (run_plan(kernels, 2) != reference || run_plan(kernels, 2, true) != float_reference) {
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
    bad = make_float_plan();
    bad.ops[1].attributes.set_int("pad_top", 5);
    failures += !refuses(bad, "float_conv: padding must be smaller than the dilated kernel");
    bad = make_float_plan();
    bad.ops[4].attributes.set_int("out_h", 4);
    failures += !refuses(bad, "tensor 'output' has 216 elements per sample, the op needs 288");
    bad = make_float_plan();
    std::swap(bad.ops[0], bad.ops[6]);
    failures += !refuses(bad, "a plan starts with its quantize (or float_input) ops");
    bad = make_float_plan();  // a second input op for input 0
    bad.sizes.push_back(bad.sizes[0]);
    bad.ops.insert(bad.ops.begin() + 1, {"float_input", Attributes().set_int("channels", 3).set_int("height", 9)
                                                            .set_int("width", 9).set_int("output", 6)});
    failures += !refuses(bad, "the input ops' indices must be 0 to 1, each once");
    bad = make_float_plan();
    bad.ops[6].attributes.set_int("index", 0);
    failures += !refuses(bad, "the output ops' indices must be 0 to 1, each once");
    bad = make_float_plan();
    std::swap(bad.ops[5], bad.ops[6]);
    failures += !refuses(bad, "its input ops (quantize or float_input) first and its output ops");
    {
        Plan p = make_float_plan();
        Engine engine(p.ops, p.sizes, p.arrays, 1, "scalar");
        std::vector<float> x(3 * 9 * 9), out(6 * 4 * 4);
        try {
            engine.run(x.data(), 1, out.data());  // one buffer for two outputs
            std::printf("a run with one output buffer for two outputs was accepted\n");
            ++failures;
        } catch (const std::invalid_argument& error) {
            failures += std::string(error.what()).find("the plan has 2 outputs, 1 buffers were given") == std::string::npos;
        }
    }
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
    print_function_digests();
    return failures ? 1 : 0;
}
