// BF16 convolution arithmetic (INT8_SPEC rule 20): float32 values rounded to bfloat16 as vcvtneps2bf16 does,
// and the tile GEMM every bf16_conv runs, out[row][p] = (sum over pairs j of x[2j+1] w[2j+1], then x[2j] w[2j],
// each added to a float32 accumulator as one fused multiply-add that flushes a denormal result to zero, as
// vdpbf16ps does) + bias. Two implementations give the same bits: vdpbf16ps on CPUs with AVX512_BF16, and the
// exact float32 one (std::fma on the bfloat16 values, whose products are exact in float32) everywhere else.
//
// A tensor stored as bfloat16 (plan dtype bf16) is in the channel-pairs layout: per sample, (C / 2, H, W) 32-bit
// words, channel 2i in the low half of word (i, y, x) and channel 2i + 1 in the high half (C is even). That is
// the GEMM's operand form, so a 1x1 stride-1 conv reads it in place, a dense conv's conversion is a copy, and a
// GEMM writes two output channels of 16 pixels with one store.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace edge {

// Pixels of one packed tile: three 16-lane vectors (the AVX-512 kernel keeps 8 rows x 3 vectors in registers).
constexpr int kBf16TilePixels = 48;
// A plane's last tile takes up to one vector more (4 rows x 4 vectors a block) rather than leave a sliver.
constexpr int kBf16LongTilePixels = kBf16TilePixels + 16;

// A plane of `pixels` in tiles: kBf16TilePixels each, the last one up to kBf16LongTilePixels.
inline int bf16_tile_count(int pixels) {
    const int tiles = (pixels + kBf16TilePixels - 1) / kBf16TilePixels;
    return tiles > 1 && pixels - (tiles - 1) * kBf16TilePixels <= kBf16LongTilePixels - kBf16TilePixels ? tiles - 1 : tiles;
}

inline int bf16_tile_pixels(int tile, int tiles, int pixels) {
    return tile + 1 < tiles ? kBf16TilePixels : pixels - tile * kBf16TilePixels;
}
// Output rows (channels) the AVX-512 kernel computes together.
constexpr int kBf16Rows = 8;

// float32 -> bfloat16 bits: round to nearest even; zeros and denormals become a zero of their sign; a NaN
// stays a NaN with its quiet bit set (vcvtneps2bf16's definition, MXCSR ignored).
inline uint16_t bf16_bits(float value) {
    uint32_t u;
    std::memcpy(&u, &value, sizeof u);
    if ((u & 0x7f800000u) == 0) return static_cast<uint16_t>((u >> 16) & 0x8000u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return static_cast<uint16_t>(u >> 16);
}

inline float bf16_value(uint16_t bits) {
    const uint32_t u = static_cast<uint32_t>(bits) << 16;
    float value;
    std::memcpy(&value, &u, sizeof value);
    return value;
}

// Two bfloat16 values in one 32-bit word, the element of even index in the low half (vdpbf16ps's pairs).
inline uint32_t bf16_pair(float even, float odd) {
    return static_cast<uint32_t>(bf16_bits(even)) | static_cast<uint32_t>(bf16_bits(odd)) << 16;
}

// One tile: `rows` output rows of `pixels` (<= kBf16LongTilePixels) outputs. Pair j of the reduction is the 32-bit
// words x + offsets[j] .. + kBf16TilePixels (one per pixel; words past `pixels` are read but not used),
// w: [ceil(rows / kBf16Rows)][pairs][kBf16Rows] words (a block's weight pairs for one j side by side, rows past
// `rows` zero), bias: rows floats or nullptr. Only the pixels whose bit is set in `keep` are written, one
// after another from out + r * row_stride for row r (a wide tile drops its border columns this way); each is
// acc + bias, plus the float at the same place under `skip` where that is not nullptr (a residual add), then
// clamped to [low, high] (-inf, inf for none). Where out_bf16 is set the results go there instead, as
// bfloat16 bits (bf16_bits: what every reader of that tensor, a bf16_conv, would round them to anyway) in the
// channel-pairs layout: rows 2i and 2i + 1 of the k-th written pixel share the 32-bit word (even row in the low
// half) at out_bf16 + 2 * (i * row_stride + k) halfwords; `rows` is then even.
struct Bf16Tile {
    const uint32_t* x;
    const long* offsets;
    const uint32_t* w;
    const float* bias;
    const float* skip;
    float* out;
    uint16_t* out_bf16;
    long row_stride;
    uint64_t keep;
    int rows, pairs, pixels;
    float low, high;
};

using Bf16TileKernel = void (*)(const Bf16Tile& tile);

// count bfloat16 pairs (even[i], odd[i]) into out[i]; odd may be nullptr (zeros).
using Bf16PairKernel = void (*)(const float* even, const float* odd, uint32_t* out, int count);

void bf16_pairs_exact(const float* even, const float* odd, uint32_t* out, int count);
// vcvtne2ps2bf16 (nullptr where the build or CPU has no AVX512_BF16).
Bf16PairKernel bf16_pairs_avx512();

// One output plane of a depthwise bf16_conv (one input channel per group), read from its input channel's
// padded plane: the channel's bfloat16 values as float32 with zeros in the padding and past it, in rows of
// row_floats floats, each row stride_w phases of phase_floats (phase p holds padded columns p, p + stride_w,
// ...). Tap t of output pixel (y, x) is padded[y * stride_h * row_floats + offsets[t] + x], so every read is
// a plain contiguous load whatever the stride or dilation. Rule 20's order for one input channel is one fused
// multiply-add per tap in row-major order from +0 (padding taps included: their +0 or -0 products are what
// the reference adds too), each result's denormal flushed; then the bias, the skip (or nullptr) and the clamp
// in plain float32; float32 to `out`, or bfloat16 bits where out_bf16 is set: the channel's half of the
// channel-pairs layout, pixel i at out_bf16[2 * i] (the other channel's halves are not touched).
struct Bf16DepthwisePlane {
    const float* padded;
    const long* offsets;
    const float* weights;
    float bias;
    const float* skip;
    float* out;
    uint16_t* out_bf16;
    long row_floats;
    int out_h, out_w, stride_h, taps;
    float low, high;
};

using Bf16DepthwiseKernel = void (*)(const Bf16DepthwisePlane& plane);
void bf16_depthwise_exact(const Bf16DepthwisePlane& plane);
// float32 fma under MXCSR's flush-to-zero, the epilogue with MXCSR as it was (nullptr where the build or CPU
// lacks AVX-512F/BW/BF16).
Bf16DepthwiseKernel bf16_depthwise_avx512();

// A channel pair of a depthwise bf16_conv (multiplier 1, dilation 1, stride 1 or 2) read straight from its
// channel-pairs input: `in` is the pair's (in_h, in_w) words. Output pixel (y, x) of channel k (0 even, 1 odd)
// is Bf16DepthwisePlane's sum over the taps (a, b) of word (y * stride_h + a - pad_top, x * stride_w + b -
// pad_left), zero outside the input, times weights[k][a * kernel_w + b], in the same order with the same flush;
// then bias[k], the skip plane skip[k] (or nullptr) and the clamp in plain float32. The results go to the f32
// planes out[k], or as channel pairs to the (out_h, out_w) words `pairs` where that is set.
struct Bf16DepthwisePairs {
    const uint32_t* in;
    const float* weights[2];
    float bias[2];
    const float* skip[2];
    float* out[2];
    uint32_t* pairs;
    int in_h, in_w, out_h, out_w, kernel_h, kernel_w, stride_h, stride_w, pad_top, pad_left;
    float low, high;
};

using Bf16DepthwisePairsKernel = void (*)(const Bf16DepthwisePairs& pair);
// AVX-512 with vdpbf16ps's flush as in bf16_depthwise_avx512 (nullptr where the build or CPU lacks
// AVX-512F/BW/BF16); other CPUs widen each channel into a padded plane and run Bf16DepthwiseKernel.
Bf16DepthwisePairsKernel bf16_depthwise_pairs_avx512();

// count float32 values rounded to bfloat16 (bf16_bits), as float32.
using Bf16RoundKernel = void (*)(const float* in, float* out, size_t count);
void bf16_round_exact(const float* in, float* out, size_t count);
// vcvtneps2bf16 (nullptr where the build or CPU has no AVX512_BF16).
Bf16RoundKernel bf16_round_avx512();

// count values of one channel of a channel-pairs tensor (its half, 0 low or 1 high, of each word) as float32.
using Bf16WidenKernel = void (*)(const uint32_t* words, int half, float* out, size_t count);
void bf16_widen_exact(const uint32_t* words, int half, float* out, size_t count);
Bf16WidenKernel bf16_widen_avx512();  // nullptr where the build or CPU lacks AVX-512F

// A padded row's two phases: even[i] = in[2i], odd[i] = in[2i + 1] for i < count (a multiple of 16).
using Bf16SplitKernel = void (*)(const float* in, float* even, float* odd, int count);
void bf16_split_exact(const float* in, float* even, float* odd, int count);
Bf16SplitKernel bf16_split_avx512();  // nullptr where the build or CPU lacks AVX-512F

// The exact float32 implementation (any CPU).
void bf16_tile_exact(const Bf16Tile& tile);
// vdpbf16ps (nullptr where the build or CPU has no AVX512_BF16).
Bf16TileKernel bf16_tile_avx512();

}  // namespace edge
