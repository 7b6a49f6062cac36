// AVX2 kernels for x86-64, compiled for AVX2 in this file only and chosen at run time when the CPU has it.
//
// The GEMM is exact for every int8 file: centered activations (code - zero point, in [-255, 255]) and
// weights (int8) are widened to int16 and multiplied with vpmaddwd, whose pair sums cannot overflow int32.
// The u8 x s8 vpmaddubsw path saturates its int16 pair sums on full-range data (INT8_SPEC.md), so it is
// not used here. FMA is deliberately not enabled: every float step must round as numpy's does.
#include "conv_driver.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx2")

namespace edge {
namespace {

inline __m256i round_onto_grid8(__m256 v, __m256 low, __m256 high, __m256i zero) {
    v = _mm256_max_ps(v, low);  // NaN -> low (the second operand), as the scalar path
    v = _mm256_min_ps(v, high);
    return _mm256_add_epi32(_mm256_cvtps_epi32(v), zero);  // MXCSR default: round half to even
}

inline void store8_u8(uint8_t* out, __m256i v) {
    const __m128i words = _mm_packus_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(out), _mm_packus_epi16(words, words));
}

inline __m256i load8_u8_as_i32(const uint8_t* src) {
    return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(src)));
}

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

template <int Block>
inline void multiply_block(const ConvOp& op, const int16_t* wide, const size_t* bases, int count, const size_t* taps,
                           const int16_t* weights, int32_t* acc) {
    switch (count) {
        case 1: multiply_tile<1, Block>(op, wide, bases, taps, weights, acc); break;
        case 2: multiply_tile<2, Block>(op, wide, bases, taps, weights, acc); break;
        case 3: multiply_tile<3, Block>(op, wide, bases, taps, weights, acc); break;
        case 4: multiply_tile<4, Block>(op, wide, bases, taps, weights, acc); break;
        case 5: multiply_tile<5, Block>(op, wide, bases, taps, weights, acc); break;
        default: multiply_tile<6, Block>(op, wide, bases, taps, weights, acc); break;
    }
}
static_assert(kTilePixels == 6, "multiply_block unrolls up to 6 pixels");

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
    static void multiply(const ConvOp& op, const int16_t* wide, const size_t* bases, int count, const size_t* taps,
                         const int16_t* weights, int32_t* acc) {
        if (op.block == 16) multiply_block<16>(op, wide, bases, count, taps, weights, acc);
        else multiply_block<8>(op, wide, bases, count, taps, weights, acc);
    }

    static void epilogue(const ConvOp& op, const int32_t* acc, int count, int first, int channel, int width,
                         const uint8_t* skip, uint8_t* output) {
        const __m256 low = _mm256_set1_ps(static_cast<float>(op.low - op.output_zero));
        const __m256 high = _mm256_set1_ps(static_cast<float>(op.high - op.output_zero));
        const __m256i zero = _mm256_set1_epi32(op.output_zero);
        const __m256 conv_scale = _mm256_set1_ps(op.conv_scale), skip_scale = _mm256_set1_ps(op.skip_scale);
        const __m256 sum_scale = _mm256_set1_ps(op.sum_scale);
        const __m256i skip_zero = _mm256_set1_epi32(op.skip_zero), sum_zero = _mm256_set1_epi32(op.sum_zero);
        const __m256 sum_low = _mm256_set1_ps(static_cast<float>(op.sum_low - op.sum_zero));
        const __m256 sum_high = _mm256_set1_ps(static_cast<float>(op.sum_high - op.sum_zero));
        const int vector_width = width / 8 * 8;
        for (int m = 0; m < count; ++m) {
            const size_t base = static_cast<size_t>(first + m) * op.out_c + channel;
            for (int j = 0; j < vector_width; j += 8) {
                const __m256i total = _mm256_add_epi32(_mm256_load_si256(reinterpret_cast<const __m256i*>(acc + m * op.block + j)),
                                                       _mm256_loadu_si256(reinterpret_cast<const __m256i*>(op.bias + channel + j)));
                const __m256 scaled = _mm256_mul_ps(_mm256_cvtepi32_ps(total), _mm256_loadu_ps(op.multiplier + channel + j));
                __m256i q = round_onto_grid8(scaled, low, high, zero);
                if (op.residual) {
                    const __m256 conv_real = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(q, zero)), conv_scale);
                    const __m256i skip_codes = _mm256_sub_epi32(load8_u8_as_i32(skip + base + j), skip_zero);
                    const __m256 skip_real = _mm256_mul_ps(_mm256_cvtepi32_ps(skip_codes), skip_scale);
                    q = round_onto_grid8(_mm256_div_ps(_mm256_add_ps(conv_real, skip_real), sum_scale), sum_low, sum_high, sum_zero);
                }
                store8_u8(output + base + j, q);
            }
        }
        if (vector_width < width) scalar_epilogue(op, acc, count, first, channel, width, skip, output, vector_width);
    }
};

void avx2_widen(const ConvOp& op, const uint8_t* input, int16_t* wide, int row_begin, int row_end) {
    widen_rows(op, input, wide, row_begin, row_end, avx2_copy_centered);
}

void avx2_conv(const ConvOp& op, const int16_t* wide, const uint8_t* skip, uint8_t* output, Range range) {
    conv_driver<Avx2Kernels>(op, wide, skip, output, range);
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

}  // namespace

const Backend* avx2_backend() {
    static const Backend backend{"avx2", avx2_widen, avx2_conv, avx2_depthwise};
    return &backend;
}

}  // namespace edge

#pragma GCC pop_options

#else
namespace edge {
const Backend* avx2_backend() { return nullptr; }
}  // namespace edge
#endif
