// Kernels of the INT8 runtime: the op descriptions they read and the per-backend entry points.
//
// Every backend (scalar, AVX2, NEON) computes the same integers: INT8_SPEC.md, bit for bit. Activations are
// uint8 codes in NHWC order; int8-activation files are shifted by +128 at compile time, which keeps every
// (code - zero_point) difference, every ordering (max pool) and every float step unchanged.
// The float steps are written so that no compiler may fuse them (built with -ffp-contract=off): a product,
// then a sum or a division, each rounded to float32 as numpy does.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>

namespace edge {

// Requantization onto an output grid: clamp(round_half_even(v) + z, lo, hi).
// Clamping v to [lo - z, hi - z] before rounding gives the same integer (the bounds are integers) and keeps
// the float-to-int conversion in range; a NaN becomes lo, as numpy's clip of its conversion does.
// Rounding uses the 1.5 * 2^23 trick: exact round-half-to-even for |v| < 2^22 (here |v| <= 255 after the
// clamp), and no libm call, so the loops that use it vectorize.
inline int round_onto_grid(float v, int z, int lo, int hi) {
    const float low = static_cast<float>(lo - z), high = static_cast<float>(hi - z);
    v = v > low ? v : low;
    v = v < high ? v : high;
    constexpr float kMagic = 12582912.0f;  // 1.5 * 2^23
    const float shifted = v + kMagic;  // rounded to float32 here: no -ffast-math, so it is never folded away
    return static_cast<int>(shifted - kMagic) + z;
}

// One convolution (or linear layer: a 1x1 convolution over a 1x1 image), with its epilogue.
struct ConvOp {
    int in_h, in_w, in_c, out_h, out_w, out_c;
    int kernel_h, kernel_w, stride_h, stride_w, pad_top, pad_left;
    int groups, group_in, group_out;  // channels per group
    int taps, group_in_padded;        // kernel_h * kernel_w; group_in rounded up to an even count
    int depth_padded;                 // taps * group_in_padded: the GEMM depth
    int wide_h, wide_w, wide_c;       // the widened, zero-bordered input the GEMM reads (see widen_input)
    int sample_h, sample_w;           // input rows/columns per widened one: the stride of a 1x1 conv, else 1
    int block;                        // output channels per packed block: 8 or 16
    int blocks;                       // per group
    // Winograd F(2x2, 3x3) (3x3, stride 1): weights are U = G' g G'^T per position (G' = 2G, so the GEMM
    // yields 4 * acc exactly); tiles of 2x2 outputs, `chunk` tiles at a time per thread.
    bool winograd;
    int tiles_h, tiles_w, chunk;
    const int16_t* weights;           // [groups][blocks][taps][group_in_padded / 2][block][2]
    // The u8 x s8 layout (AVX-512 VNNI): uint8 codes bordered with the input zero point, channels padded to
    // a multiple of 4, int8 weights [groups][blocks][taps][group_in_padded / 4][block][4]; the bias then
    // carries the zero-point compensation -z_x * sum(w[c]) (INT8_SPEC rule 5).
    bool quads;
    const int8_t* weights8;
    // Sparse (algorithm "sparse"): each (group, block) column multiplies only its nonzero steps, a step being
    // one tap's depth group (4 input channels in quads, 2 in pairs) whose weights over the block are not all
    // zero. Column k's steps are [step_starts[k], step_starts[k + 1]): their offsets into a pixel's window
    // (tap offset + first channel) in step_offsets, their weights packed one step after another. Skipping
    // a zero product changes no integer, so the result is the dense one bit for bit.
    bool sparse;
    const int32_t* step_starts;       // [groups * blocks + 1]
    const size_t* step_offsets;       // [step_starts[groups * blocks]]
    const int32_t* bias;              // [out_c]
    const float* multiplier;          // [out_c]: float32(s_x * s_w[c]) / s_y
    int input_zero, output_zero, low, high;
    // A residual add folded into the epilogue: out = onto((q - output_zero) * conv_scale + (skip - skip_zero) * skip_scale)
    bool residual;
    float conv_scale, skip_scale, sum_scale;
    int skip_zero, sum_zero, sum_low, sum_high;
};

enum class DepthwiseLayout { taps, quads, pairs, columns };

struct DepthwiseOp {
    int in_h, in_w, channels, out_h, out_w;
    int kernel_h, kernel_w, stride_h, stride_w, pad_top, pad_left;
    const int32_t* weights;  // [kernel_h * kernel_w][channels] (the taps layout)
    const int32_t* bias;     // [channels]; in a lane layout [block][register][lane], compensated (below)
    const float* multiplier; // likewise
    int input_zero, output_zero, low, high;
    // The lane layouts multiply raw codes by the weights, the zero-point compensation -z_x * sum(w[c]) in the
    // bias (INT8_SPEC rule 5), so a tap outside the image reads `zero_row` (input_zero codes, the channels
    // rounded up to a whole block) and adds exactly 0, and every pixel runs one loop:
    //   quads (AVX-512 VNNI): blocks of 64 channels in 4 registers of 16 int32 lanes, taps in quads of uint8 x int8
    //     (vpdpbusd); weights8 [block][tap quad][register][lane][4 taps];
    //   pairs (AVX2): blocks of 16 channels in 2 registers of 8 lanes, taps in pairs of int16 (vpmaddwd);
    //     weights16 [block][tap pair][register][lane][2 taps];
    //   columns (AVX-512 VNNI, kernel_h <= 8): as quads, but each quad is four of one kernel column's taps
    //     (ky = 0 .. kernel_h - 1, zero weights after; two quads a column past kernel_h 4), so one input column's
    //     interleaved codes serve every output pixel whose window covers it; weights8
    //     [block][kx][quad][register][lane][4 rows].
    // Bias and multipliers are then [block][register][lane]; depthwise_lane_channel gives the lane order.
    DepthwiseLayout layout;
    const int8_t* weights8;
    const int16_t* weights16;
    const uint8_t* zero_row;
};

// The channel (within its block) that register `reg`, int32 lane `lane` of a lane layout with `registers`
// registers holds: 4 * registers * (lane / 4) + 4 * reg + lane % 4. It is the order that unpacking the taps'
// codes (byte-wise then word-wise for quads, word-wise for pairs, always within 128-bit lanes) leaves them in,
// and the one that packing the registers' results back (vpackssdw, then vpackuswb) undoes: no other shuffle.
inline int depthwise_lane_channel(int registers, int reg, int lane) { return 4 * registers * (lane / 4) + 4 * reg + lane % 4; }

// Range of output pixels (flattened over batch, rows and columns) and of (group, block) columns to compute.
struct Range {
    int pixel_begin, pixel_end, column_begin, column_end;
};

// The conv's input as the GEMM reads it: int16 (code - zero point) in NHWC with a zero border of the conv's
// padding, each group's channels padded to an even count: [batch][wide_h][wide_w][wide_c]. Built once per
// layer (rows [row_begin, row_end) of batch * wide_h), so every window read is in bounds and no tile repacks.
inline size_t wide_elements(const ConvOp& op, int batch) {
    return static_cast<size_t>(batch) * op.wide_h * op.wide_w * op.wide_c;
}

struct Backend {
    const char* name;
    void (*widen)(const ConvOp& op, const uint8_t* input, int16_t* wide, int row_begin, int row_end);
    void (*conv)(const ConvOp& op, const int16_t* wide, const uint8_t* skip, uint8_t* output, Range range);
    void (*depthwise)(const DepthwiseOp& op, const uint8_t* input, uint8_t* output, int pixel_begin, int pixel_end);
    // The u8 x s8 conv on a bordered uint8 input (nullptr where the CPU has no exact u8 x s8 instruction).
    void (*conv8)(const ConvOp& op, const uint8_t* wide, const uint8_t* skip, uint8_t* output, Range range);
    // Winograd conv of tiles [tile_begin, tile_end) (tile = image * tiles_h * tiles_w + row * tiles_w + column).
    void (*winograd)(const ConvOp& op, const int16_t* wide, const uint8_t* skip, uint8_t* output, int tile_begin,
                     int tile_end, void* scratch);
    // The depthwise conv in the quads layout (nullptr where the CPU has no exact u8 x s8 instruction) and in
    // the pairs layout (nullptr where the path has no kernel for it).
    void (*depthwise_quads)(const DepthwiseOp& op, const uint8_t* input, uint8_t* output, int pixel_begin, int pixel_end) = nullptr;
    void (*depthwise_pairs)(const DepthwiseOp& op, const uint8_t* input, uint8_t* output, int pixel_begin, int pixel_end) = nullptr;
    // The depthwise conv in the columns layout (nullptr where the CPU has no exact u8 x s8 instruction).
    void (*depthwise_columns)(const DepthwiseOp& op, const uint8_t* input, uint8_t* output, int pixel_begin, int pixel_end) = nullptr;
};

// The backend's depthwise kernel for `layout` (nullptr where the path has none).
inline auto depthwise_kernel(const Backend& backend, DepthwiseLayout layout) {
    return layout == DepthwiseLayout::quads     ? backend.depthwise_quads
           : layout == DepthwiseLayout::pairs   ? backend.depthwise_pairs
           : layout == DepthwiseLayout::columns ? backend.depthwise_columns
                                                : backend.depthwise;
}

// Per-thread scratch of a Winograd conv: transformed inputs V [16][chunk][wide_c] int16 and GEMM results
// M [16][chunk][block] int32.
inline size_t winograd_scratch_bytes(const ConvOp& op) {
    return 16 * static_cast<size_t>(op.chunk) * (op.wide_c * sizeof(int16_t) + op.block * sizeof(int32_t)) + 128;
}

const Backend& scalar_backend();
const Backend* avx2_backend();  // nullptr when not built for this architecture
const Backend* neon_backend();  // nullptr when not built for this architecture
const Backend* avx512_backend();  // AVX-512 VNNI; nullptr when not built for this architecture

// The CPU's int8 multiply-add peak, for benchmarks to compare against: `iterations` rounds of 12
// independent register-only chains of the widest int8 instruction (vpdpbusd on 512 bits with VNNI, else
// AVX2's vpmaddubsw + vpmaddwd + vpaddd, the fastest inexact u8 x s8 sequence). Returns the multiply-adds
// done, or 0 where the file is not built for this CPU.
double avx512_peak_macs(long iterations);
double avx2_peak_macs(long iterations);

// Tile of output pixels the conv kernels pack together (rows of the GEMM micro-kernel).
constexpr int kTilePixels = 6;
constexpr int kQuadTilePixels = 12;  // the VNNI micro-kernel's (32 registers)

// Input channels per step of a conv's packed weights: a quad (u8 x s8) or a pair (int16).
inline int conv_depth_group(const ConvOp& c) { return c.quads ? 4 : 2; }

// Fills a conv's derived fields from its shape, groups, block, `quads` and `winograd` (the engine and the
// native kernel tests both use it); returns the number of packed weights the layout holds.
inline size_t derive_conv_fields(ConvOp& c) {
    c.group_in = c.in_c / c.groups, c.group_out = c.out_c / c.groups;
    c.taps = c.kernel_h * c.kernel_w;
    const int depth_group = conv_depth_group(c);
    c.group_in_padded = (c.group_in + depth_group - 1) / depth_group * depth_group;
    c.depth_padded = c.taps * c.group_in_padded;
    c.wide_h = (c.out_h - 1) * c.stride_h + c.kernel_h;
    c.wide_w = (c.out_w - 1) * c.stride_w + c.kernel_w;
    c.wide_c = c.groups * c.group_in_padded;
    c.blocks = (c.group_out + c.block - 1) / c.block;
    c.sample_h = c.sample_w = 1;
    if (c.taps == 1 && c.pad_top == 0 && c.pad_left == 0 && !c.winograd) {  // a strided 1x1 reads only every
        c.sample_h = c.stride_h, c.sample_w = c.stride_w;                     // stride-th pixel: widen only those
        c.wide_h = c.out_h, c.wide_w = c.out_w;
    }
    if (!c.winograd) return static_cast<size_t>(c.groups) * c.blocks * c.depth_padded * c.block;
    c.tiles_h = (c.out_h + 1) / 2, c.tiles_w = (c.out_w + 1) / 2;
    c.wide_h = 2 * c.tiles_h + 2, c.wide_w = 2 * c.tiles_w + 2;
    c.chunk = std::max(kTilePixels, std::min(96, 3072 / c.wide_c / kTilePixels * kTilePixels));
    return static_cast<size_t>(c.groups) * c.blocks * 16 * c.group_in_padded * c.block;
}

// Epilogue for one accumulator of output channel c at output position `index` (shared by every backend's tails).
inline uint8_t conv_epilogue(const ConvOp& op, int32_t acc, int c, const uint8_t* skip, size_t index) {
    const float scaled = static_cast<float>(static_cast<int64_t>(acc) + op.bias[c]) * op.multiplier[c];  // exact sum
    const int q = round_onto_grid(scaled, op.output_zero, op.low, op.high);
    if (!op.residual) return static_cast<uint8_t>(q);
    const float conv_real = static_cast<float>(q - op.output_zero) * op.conv_scale;
    const float skip_real = static_cast<float>(static_cast<int>(skip[index]) - op.skip_zero) * op.skip_scale;
    const float sum = conv_real + skip_real;
    return static_cast<uint8_t>(round_onto_grid(sum / op.sum_scale, op.sum_zero, op.sum_low, op.sum_high));
}

}  // namespace edge
