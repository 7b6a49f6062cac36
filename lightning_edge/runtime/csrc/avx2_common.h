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

    void store(const ConvOp& op, __m256i acc, int channel, const uint8_t* skip, uint8_t* out) const {
        const __m256i total = _mm256_add_epi32(acc, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(op.bias + channel)));
        const __m256 scaled = _mm256_mul_ps(_mm256_cvtepi32_ps(total), _mm256_loadu_ps(op.multiplier + channel));
        __m256i q = round_onto_grid8(scaled, low, high, zero);
        if (op.residual) {
            const __m256 conv_real = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(q, zero)), conv_scale);
            const __m256i skip_codes = _mm256_sub_epi32(load8_u8_as_i32(skip), skip_zero);
            const __m256 skip_real = _mm256_mul_ps(_mm256_cvtepi32_ps(skip_codes), skip_scale);
            q = round_onto_grid8(_mm256_div_ps(_mm256_add_ps(conv_real, skip_real), sum_scale), sum_low, sum_high, sum_zero);
        }
        store8_u8(out, q);
    }
};

// The epilogue of a GEMM tile: acc is [count][op.block] for channels [channel, channel + width).
inline void epilogue_tile(const ConvOp& op, const int32_t* acc, int count, int first, int channel, int width,
                          const uint8_t* skip, uint8_t* output) {
    const Epilogue8 epilogue(op);
    const int vector_width = width / 8 * 8;
    for (int m = 0; m < count; ++m) {
        const size_t base = static_cast<size_t>(first + m) * op.out_c + channel;
        for (int j = 0; j < vector_width; j += 8)
            epilogue.store(op, _mm256_load_si256(reinterpret_cast<const __m256i*>(acc + m * op.block + j)), channel + j,
                           skip ? skip + base + j : nullptr, output + base + j);
    }
    if (vector_width < width) scalar_epilogue(op, acc, count, first, channel, width, skip, output, vector_width);
}

}  // namespace
}  // namespace edge
