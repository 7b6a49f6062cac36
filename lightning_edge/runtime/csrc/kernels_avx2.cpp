// AVX2 kernels for x86-64, compiled for AVX2 in this file only and chosen at run time when the CPU has it.
//
// The GEMM is exact for every int8 file: centered activations (code - zero point, in [-255, 255]) and
// weights (int8) are widened to int16 and multiplied with vpmaddwd, whose pair sums cannot overflow int32.
// The u8 x s8 vpmaddubsw path saturates its int16 pair sums on full-range data (INT8_SPEC.md), so it is
// not used here. FMA is deliberately not enabled: every float step must round as numpy's does.
#include "winograd.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx2")

#include "avx2_common.h"

namespace edge {
namespace {

template <int Count, int Block>
inline void multiply_tile(const ConvOp& op, const int16_t* wide, const size_t* bases, const size_t* tap_offsets,
                          const int16_t* weights, int32_t* acc) {
    constexpr int Vectors = Block / 8;
    __m256i sum[Count][Vectors];
#pragma GCC unroll 8
    for (int m = 0; m < Count; ++m)
#pragma GCC unroll 2
        for (int v = 0; v < Vectors; ++v) sum[m][v] = _mm256_setzero_si256();
    const int pairs = op.group_in_padded / 2;
    const int16_t* w = weights;
    for (int t = 0; t < op.taps; ++t) {
        const int32_t* x[Count];
#pragma GCC unroll 8
        for (int m = 0; m < Count; ++m) x[m] = reinterpret_cast<const int32_t*>(wide + bases[m] + tap_offsets[t]);
        for (int p = 0; p < pairs; ++p, w += Block * 2) {
            __m256i wv[Vectors];
#pragma GCC unroll 2
            for (int v = 0; v < Vectors; ++v) wv[v] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + v * 16));
#pragma GCC unroll 8
            for (int m = 0; m < Count; ++m) {
                const __m256i a = _mm256_set1_epi32(x[m][p]);
#pragma GCC unroll 2
                for (int v = 0; v < Vectors; ++v) sum[m][v] = _mm256_add_epi32(sum[m][v], _mm256_madd_epi16(a, wv[v]));
            }
        }
    }
#pragma GCC unroll 8
    for (int m = 0; m < Count; ++m)
#pragma GCC unroll 2
        for (int v = 0; v < Vectors; ++v) _mm256_store_si256(reinterpret_cast<__m256i*>(acc + m * Block + v * 8), sum[m][v]);
}

// A sparse column's steps (kernels.h): each step is one pair of input channels at offsets[s] from every
// pixel's window, its weights [Block][2] next; the pixels' addresses are computed once for the tile.
template <int Count, int Block>
inline void multiply_pair_steps(const int16_t* wide, const size_t* bases, const size_t* offsets, int steps,
                                const int16_t* weights, int32_t* acc) {
    constexpr int Vectors = Block / 8;
    const int16_t* x[Count];
#pragma GCC unroll 8
    for (int m = 0; m < Count; ++m) x[m] = wide + bases[m];
    __m256i sum[Count][Vectors];
#pragma GCC unroll 8
    for (int m = 0; m < Count; ++m)
#pragma GCC unroll 2
        for (int v = 0; v < Vectors; ++v) sum[m][v] = _mm256_setzero_si256();
    const int16_t* w = weights;
    for (int s = 0; s < steps; ++s, w += Block * 2) {
        const size_t offset = offsets[s];
        __m256i wv[Vectors];
#pragma GCC unroll 2
        for (int v = 0; v < Vectors; ++v) wv[v] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + v * 16));
#pragma GCC unroll 8
        for (int m = 0; m < Count; ++m) {
            int32_t pair;
            std::memcpy(&pair, x[m] + offset, sizeof(pair));
            const __m256i a = _mm256_set1_epi32(pair);
#pragma GCC unroll 2
            for (int v = 0; v < Vectors; ++v) sum[m][v] = _mm256_add_epi32(sum[m][v], _mm256_madd_epi16(a, wv[v]));
        }
    }
#pragma GCC unroll 8
    for (int m = 0; m < Count; ++m)
#pragma GCC unroll 2
        for (int v = 0; v < Vectors; ++v) _mm256_store_si256(reinterpret_cast<__m256i*>(acc + m * Block + v * 8), sum[m][v]);
}

template <int Block>
inline void multiply_block(const ConvOp& op, const int16_t* wide, const size_t* bases, int count, const size_t* taps,
                           const int16_t* weights, int32_t* acc) {
    with_count<kTilePixels>(count, [&](auto rows) { multiply_tile<rows.value, Block>(op, wide, bases, taps, weights, acc); });
}

void avx2_copy_centered(const uint8_t* src, int16_t* dst, int n, int16_t zero) {
    const __m256i centre = _mm256_set1_epi16(zero);
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m256i wide = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i)));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), _mm256_sub_epi16(wide, centre));
    }
    for (; i < n; ++i) dst[i] = static_cast<int16_t>(src[i] - zero);
}

struct Avx2Kernels {
    static constexpr int kTile = kTilePixels;

    static void multiply(const ConvOp& op, const int16_t* wide, const size_t* bases, int count, const size_t* taps,
                         const int16_t* weights, int32_t* acc) {
        if (op.block == 16) multiply_block<16>(op, wide, bases, count, taps, weights, acc);
        else multiply_block<8>(op, wide, bases, count, taps, weights, acc);
    }

    static void multiply_steps(const ConvOp& op, const int16_t* wide, const size_t* bases, int count, const size_t* offsets,
                               int steps, const int16_t* weights, int32_t* acc) {
        with_count<kTilePixels>(count, [&](auto rows) {
            if (op.block == 16) multiply_pair_steps<rows.value, 16>(wide, bases, offsets, steps, weights, acc);
            else multiply_pair_steps<rows.value, 8>(wide, bases, offsets, steps, weights, acc);
        });
    }

    static void epilogue(const ConvOp& op, const int32_t* acc, int count, int first, int channel, int width,
                         const uint8_t* skip, uint8_t* output) {
        epilogue_tile(op, acc, count, first, channel, width, skip, output);
    }

    static void winograd_store(const ConvOp& op, const int32_t* m, int first, int count, int channel, int width,
                               const uint8_t* skip, uint8_t* output) {
        const Epilogue8 epilogue(op);
        const int vector_width = width / 8 * 8;
        const int per_image = op.tiles_h * op.tiles_w;
        const size_t position_stride = static_cast<size_t>(op.chunk) * op.block;
        for (int t = 0; t < count; ++t) {
            const int tile = first + t, n = tile / per_image, rest = tile % per_image;
            const int oh = 2 * (rest / op.tiles_w), ow = 2 * (rest % op.tiles_w);
            for (int j = 0; j < vector_width; j += 8) {
                const int32_t* at = m + static_cast<size_t>(t) * op.block + j;
                __m256i s[2][4];
                for (int c = 0; c < 4; ++c) {  // A^T m: rows
                    const __m256i a = _mm256_load_si256(reinterpret_cast<const __m256i*>(at + c * position_stride));
                    const __m256i b = _mm256_load_si256(reinterpret_cast<const __m256i*>(at + (4 + c) * position_stride));
                    const __m256i e = _mm256_load_si256(reinterpret_cast<const __m256i*>(at + (8 + c) * position_stride));
                    const __m256i f = _mm256_load_si256(reinterpret_cast<const __m256i*>(at + (12 + c) * position_stride));
                    s[0][c] = _mm256_add_epi32(_mm256_add_epi32(a, b), e);
                    s[1][c] = _mm256_sub_epi32(_mm256_sub_epi32(b, e), f);
                }
                for (int i = 0; i < 2; ++i) {  // (A^T m) A: columns, then / 4
                    const __m256i y0 = _mm256_add_epi32(_mm256_add_epi32(s[i][0], s[i][1]), s[i][2]);
                    const __m256i y1 = _mm256_sub_epi32(_mm256_sub_epi32(s[i][1], s[i][2]), s[i][3]);
                    const int h = oh + i;
                    if (h >= op.out_h) continue;
                    for (int k = 0; k < 2; ++k) {
                        const int w = ow + k;
                        if (w >= op.out_w) continue;
                        const size_t index = ((static_cast<size_t>(n) * op.out_h + h) * op.out_w + w) * op.out_c + channel + j;
                        epilogue.store(op, _mm256_srai_epi32(k == 0 ? y0 : y1, 2), channel + j, skip ? skip + index : nullptr,
                                       output + index);
                    }
                }
            }
        }
        if (vector_width < width) winograd_store_scalar(op, m, first, count, channel, width, skip, output, vector_width);
    }
};

void avx2_widen(const ConvOp& op, const uint8_t* input, int16_t* wide, int row_begin, int row_end) {
    widen_rows(op, input, wide, row_begin, row_end, avx2_copy_centered);
}

void avx2_conv(const ConvOp& op, const int16_t* wide, const uint8_t* skip, uint8_t* output, Range range) {
    conv_driver<Avx2Kernels>(op, wide, op.weights, skip, output, range);
}

void avx2_winograd(const ConvOp& op, const int16_t* wide, const uint8_t* skip, uint8_t* output, int tile_begin,
                   int tile_end, void* scratch) {
    winograd_driver<Avx2Kernels>(op, wide, skip, output, tile_begin, tile_end, scratch);
}

void avx2_depthwise(const DepthwiseOp& op, const uint8_t* input, uint8_t* output, int pixel_begin, int pixel_end) {
    size_t offsets[kMaxTaps];
    int taps[kMaxTaps];
    const __m256 low = _mm256_set1_ps(static_cast<float>(op.low - op.output_zero));
    const __m256 high = _mm256_set1_ps(static_cast<float>(op.high - op.output_zero));
    const __m256i zero = _mm256_set1_epi32(op.output_zero), input_zero = _mm256_set1_epi32(op.input_zero);
    const int vector_channels = op.channels / 8 * 8;
    for (int pixel = pixel_begin; pixel < pixel_end; ++pixel) {
        int count = 0;
        for_each_depthwise_tap(op, pixel, [&](size_t offset, int tap) { offsets[count] = offset; taps[count++] = tap; });
        uint8_t* out = output + static_cast<size_t>(pixel) * op.channels;
        for (int c = 0; c < vector_channels; c += 8) {
            __m256i sum = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(op.bias + c));
            for (int t = 0; t < count; ++t) {
                const __m256i x = _mm256_sub_epi32(load8_u8_as_i32(input + offsets[t] + c), input_zero);
                const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(op.weights + static_cast<size_t>(taps[t]) * op.channels + c));
                sum = _mm256_add_epi32(sum, _mm256_mullo_epi32(x, w));
            }
            const __m256 scaled = _mm256_mul_ps(_mm256_cvtepi32_ps(sum), _mm256_loadu_ps(op.multiplier + c));
            store8_u8(out + c, round_onto_grid8(scaled, low, high, zero));
        }
        for (int c = vector_channels; c < op.channels; ++c) {
            int32_t sum = op.bias[c];
            for (int t = 0; t < count; ++t)
                sum += (input[offsets[t] + c] - op.input_zero) * op.weights[static_cast<size_t>(taps[t]) * op.channels + c];
            out[c] = static_cast<uint8_t>(round_onto_grid(static_cast<float>(sum) * op.multiplier[c], op.output_zero, op.low, op.high));
        }
    }
}

// Depthwise conv in the pairs layout, 16 channels per step: each pair of taps' codes is widened to int16 and
// interleaved word-wise (vpunpck{l,h}wd) into two registers of (tap 0, tap 1) pairs, one vpmaddwd each; raw
// codes (0..255) times int8 weights sum exactly in int32, the zero-point compensation being in the bias.
// A remainder of 8 channels runs the same step on half a register; the last channels % 8 run scalar.
void avx2_depthwise_pairs(const DepthwiseOp& op, const uint8_t* input, uint8_t* output, int pixel_begin, int pixel_end) {
    const int taps = op.kernel_h * op.kernel_w, pairs = (taps + 1) / 2;
    const uint8_t* rows[kMaxTaps + 1];
    rows[taps] = op.zero_row;  // the second tap of an odd window's last pair (its weight is 0)
    const __m256 low = _mm256_set1_ps(static_cast<float>(op.low - op.output_zero));
    const __m256 high = _mm256_set1_ps(static_cast<float>(op.high - op.output_zero));
    const __m256i zero = _mm256_set1_epi32(op.output_zero);
    const int vector16 = op.channels / 16 * 16, vector8 = op.channels / 8 * 8;
    // One step of 16 channels (or, `half`, the first 8 of a block): the two registers' accumulators.
    auto step = [&](int c, bool half, __m256i& acc0, __m256i& acc1) {
        const int block = c / 16;
        acc0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(op.bias + block * 16));
        acc1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(op.bias + block * 16 + 8));
        const int16_t* w = op.weights16 + static_cast<size_t>(block) * pairs * 32;
        for (int p = 0; p < pairs; ++p, w += 32) {
            const uint8_t* a = rows[2 * p] + c;
            const uint8_t* b = rows[2 * p + 1] + c;
            const __m256i x0 = half ? _mm256_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(a)))
                                    : _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a)));
            const __m256i x1 = half ? _mm256_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(b)))
                                    : _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b)));
            acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(_mm256_unpacklo_epi16(x0, x1), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w))));
            acc1 = _mm256_add_epi32(acc1, _mm256_madd_epi16(_mm256_unpackhi_epi16(x0, x1), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 16))));
        }
        const float* multiplier = op.multiplier + block * 16;
        const __m256i q0 = round_onto_grid8(_mm256_mul_ps(_mm256_cvtepi32_ps(acc0), _mm256_loadu_ps(multiplier)), low, high, zero);
        const __m256i q1 = round_onto_grid8(_mm256_mul_ps(_mm256_cvtepi32_ps(acc1), _mm256_loadu_ps(multiplier + 8)), low, high, zero);
        const __m256i words = _mm256_packs_epi32(q0, q1);  // channels in order again, 8 per 128-bit lane
        return _mm256_packus_epi16(words, words);        // bytes 0-7 of each lane: its 8 channels
    };
    const int per_image = op.out_h * op.out_w;
    int n = pixel_begin / per_image, oh = pixel_begin % per_image / op.out_w, ow = pixel_begin % op.out_w;
    for (int pixel = pixel_begin; pixel < pixel_end; ++pixel) {
        depthwise_tap_rows(op, input, n, oh, ow, rows);
        uint8_t* out = output + static_cast<size_t>(pixel) * op.channels;
        __m256i acc0, acc1;
        for (int c = 0; c < vector16; c += 16) {
            const __m256i bytes = step(c, false, acc0, acc1);
            _mm_storeu_si128(reinterpret_cast<__m128i*>(out + c), _mm256_castsi256_si128(_mm256_permute4x64_epi64(bytes, 0x08)));
        }
        if (vector8 > vector16) _mm_storel_epi64(reinterpret_cast<__m128i*>(out + vector16), _mm256_castsi256_si128(step(vector16, true, acc0, acc1)));
        for (int c = vector8; c < op.channels; ++c) {  // channel l of block b sits in register (l % 8) / 4, lane 4 * (l / 8) + l % 4
            const int block = c / 16, l = c % 16, index = block * 16 + (l % 8) / 4 * 8 + 4 * (l / 8) + l % 4;
            int32_t sum = op.bias[index];
            const int16_t* w = op.weights16 + static_cast<size_t>(block) * pairs * 32 + (index % 16) * 2;
            for (int t = 0; t < 2 * pairs; ++t) sum += rows[t][c] * w[t / 2 * 32 + t % 2];
            out[c] = static_cast<uint8_t>(round_onto_grid(static_cast<float>(sum) * op.multiplier[index], op.output_zero, op.low, op.high));
        }
        if (++ow == op.out_w) {
            ow = 0;
            if (++oh == op.out_h) oh = 0, ++n;
        }
    }
}

}  // namespace

double avx2_peak_macs(long iterations) {
    __m256i acc[12];
    for (int i = 0; i < 12; ++i) acc[i] = _mm256_set1_epi32(i);
    __m256i a = _mm256_set1_epi32(0x01020304), b = _mm256_set1_epi32(0x05060708);
    const __m256i ones = _mm256_set1_epi16(1);
    for (long r = 0; r < iterations; ++r) {
#pragma GCC unroll 12
        for (int i = 0; i < 12; ++i) acc[i] = _mm256_add_epi32(acc[i], _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), ones));
        __asm__ volatile("" : "+x"(a), "+x"(b));
    }
    int32_t sink[8];
    __m256i total = acc[0];
    for (int i = 1; i < 12; ++i) total = _mm256_add_epi32(total, acc[i]);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(sink), total);
    volatile int32_t keep = sink[0];
    (void)keep;
    return 12.0 * 32.0 * static_cast<double>(iterations);
}

const Backend* avx2_backend() {
    static const Backend backend{"avx2", avx2_widen, avx2_conv, avx2_depthwise, nullptr, avx2_winograd, nullptr, avx2_depthwise_pairs};
    return &backend;
}

}  // namespace edge

#pragma GCC pop_options

#else
namespace edge {
const Backend* avx2_backend() { return nullptr; }
double avx2_peak_macs(long) { return 0; }
}  // namespace edge
#endif
