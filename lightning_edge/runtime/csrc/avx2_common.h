// AVX2 helpers shared by the AVX2 and AVX-512 VNNI kernel files: rounding onto a grid, packing 8 results to
// uint8, and the conv epilogue for 8 output channels. Include it after the file's `#pragma GCC target`:
// everything here has internal linkage, so each file gets its own copy built for its own instruction set
// (a shared inline copy could hand AVX-512 code to an AVX2-only CPU).
#pragma once

#include <immintrin.h>

#include "conv_driver.h"

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

// The conv epilogue for 8 output channels: bias, multiplier, grid, and the folded residual add.
struct Epilogue8 {
    __m256 low, high, conv_scale, skip_scale, sum_scale, sum_low, sum_high;
    __m256i zero, skip_zero, sum_zero;

    explicit Epilogue8(const ConvOp& op)
        : low(_mm256_set1_ps(static_cast<float>(op.low - op.output_zero))),
          high(_mm256_set1_ps(static_cast<float>(op.high - op.output_zero))),
          conv_scale(_mm256_set1_ps(op.conv_scale)), skip_scale(_mm256_set1_ps(op.skip_scale)),
          sum_scale(_mm256_set1_ps(op.sum_scale)),
          sum_low(_mm256_set1_ps(static_cast<float>(op.sum_low - op.sum_zero))),
          sum_high(_mm256_set1_ps(static_cast<float>(op.sum_high - op.sum_zero))),
          zero(_mm256_set1_epi32(op.output_zero)), skip_zero(_mm256_set1_epi32(op.skip_zero)),
          sum_zero(_mm256_set1_epi32(op.sum_zero)) {}

    // 8 channels' codes before the residual add: acc + bias, times the multiplier, onto the output grid.
    __m256i codes(__m256i acc, __m256i bias, __m256 multiplier) const {
        return round_onto_grid8(_mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(acc, bias)), multiplier), low, high, zero);
    }

    // The folded residual add of 8 channels: the conv's codes q and the skip's.
    __m256i add_skip(__m256i q, const uint8_t* skip) const {
        const __m256 conv_real = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(q, zero)), conv_scale);
        const __m256i skip_codes = _mm256_sub_epi32(load8_u8_as_i32(skip), skip_zero);
        const __m256 skip_real = _mm256_mul_ps(_mm256_cvtepi32_ps(skip_codes), skip_scale);
        return round_onto_grid8(_mm256_div_ps(_mm256_add_ps(conv_real, skip_real), sum_scale), sum_low, sum_high, sum_zero);
    }

    void store(const ConvOp& op, __m256i acc, int channel, const uint8_t* skip, uint8_t* out) const {
        __m256i q = codes(acc, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(op.bias + channel)),
                          _mm256_loadu_ps(op.multiplier + channel));
        if (op.residual) q = add_skip(q, skip);
        store8_u8(out, q);
    }
};

// 16 codes (8 channels in each of q0 and q1, each in [0, 255]) stored in channel order.
inline void store16_u8(uint8_t* out, __m256i q0, __m256i q1) {
    const __m256i words = _mm256_packs_epi32(q0, q1);      // lanes: q0 0-3, q1 0-3 | q0 4-7, q1 4-7
    const __m256i bytes = _mm256_packus_epi16(words, words);  // each lane's 8 codes twice, as 2 dwords
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 0, 4, 1, 5);  // q0 0-3, q0 4-7, q1 0-3, q1 4-7
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(bytes, order)));
}

// The epilogue of a GEMM tile: acc is [count][op.block] for channels [channel, channel + width). Channels
// outer, pixels inner: each step's bias and multipliers are loaded once for the tile, and the op's fields are
// read into locals once (the uint8 stores could alias them).
inline void epilogue_tile(const ConvOp& op, const int32_t* acc, int count, int first, int channel, int width,
                          const uint8_t* skip, uint8_t* output) {
    const Epilogue8 epilogue(op);
    const int block = op.block;
    const size_t out_c = op.out_c;
    const bool residual = op.residual;
    const int32_t* bias = op.bias + channel;
    const float* multiplier = op.multiplier + channel;
    uint8_t* out = output + static_cast<size_t>(first) * out_c + channel;
    const uint8_t* skip_at = residual ? skip + static_cast<size_t>(first) * out_c + channel : nullptr;
    auto load = [](const int32_t* at) { return _mm256_load_si256(reinterpret_cast<const __m256i*>(at)); };
    int j = 0;
    for (; j + 16 <= width; j += 16) {
        const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bias + j));
        const __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bias + j + 8));
        const __m256 m0 = _mm256_loadu_ps(multiplier + j), m1 = _mm256_loadu_ps(multiplier + j + 8);
        for (int m = 0; m < count; ++m) {
            __m256i q0 = epilogue.codes(load(acc + m * block + j), b0, m0);
            __m256i q1 = epilogue.codes(load(acc + m * block + j + 8), b1, m1);
            if (residual) {
                q0 = epilogue.add_skip(q0, skip_at + m * out_c + j);
                q1 = epilogue.add_skip(q1, skip_at + m * out_c + j + 8);
            }
            store16_u8(out + m * out_c + j, q0, q1);
        }
    }
    for (; j + 8 <= width; j += 8) {
        const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bias + j));
        const __m256 m0 = _mm256_loadu_ps(multiplier + j);
        for (int m = 0; m < count; ++m) {
            __m256i q = epilogue.codes(load(acc + m * block + j), b0, m0);
            if (residual) q = epilogue.add_skip(q, skip_at + m * out_c + j);
            store8_u8(out + m * out_c + j, q);
        }
    }
    if (j < width) scalar_epilogue(op, acc, count, first, channel, width, skip, output, j);
}

}  // namespace
}  // namespace edge
