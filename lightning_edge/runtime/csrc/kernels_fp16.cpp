// The fp16_conv tile (fp16.h): the exact scalar form for every CPU, AVX-512 in double lanes, and NEON's half
// arithmetic on aarch64 CPUs with FEAT_FP16.
//
// Each keeps kFp16Pixels x kFp16Outputs accumulators, one chain per output (the taps' and channels' fused
// multiply-adds in rule 21's order), loads a (tap, channel)'s weights for the 16 outputs once and broadcasts
// each pixel's input value to them.
#include <algorithm>

#include "conv_driver.h"  // with_count
#include "cpu_features.h"
#include "fp16.h"

#if defined(__aarch64__)
#include <sys/auxv.h>
#endif

namespace edge {

namespace {

inline float clamped(float value, float low, float high) {
    value = value < low ? low : value;
    return high < value ? high : value;
}

// The epilogue of one output: float32(acc) + bias, the skip, the clamp.
inline void store(const Fp16Tile& t, int o, int p, float acc) {
    float y = acc + (t.bias ? t.bias[o] : 0.0f);
    const long at = static_cast<long>(o) * t.out_stride + p;
    if (t.skip) y = y + t.skip[at];
    t.out[at] = clamped(y, t.low, t.high);
}

}  // namespace

void fp16_tile_exact(const Fp16Tile& t) {
    for (int o = 0; o < t.outputs; ++o)
        for (int p = 0; p < t.pixels; ++p) {
            double acc = 0.0;
            for (int tap = 0; tap < t.taps; ++tap) {
                const double* x = t.x64 + p * t.pixel_step + t.tap_offsets[tap];
                const double* w = t.w64 + static_cast<long>(tap) * t.channels * kFp16Outputs + o;
                for (int c = 0; c < t.channels; ++c) acc = fp16_value(fp16_bits(x[c] * w[c * kFp16Outputs] + acc));
            }
            store(t, o, p, static_cast<float>(acc));
        }
}

}  // namespace edge

#if defined(__x86_64__)
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx2,fma,avx512f")

namespace edge {

namespace {

// Doubles rounded to half precision, each lane as fp16_bits then fp16_value: |v| rounded to 11 significant bits
// (10 below 2^-14) by adding and taking away 1.5 * 2^(e + 42), e its exponent clamped to [-14, 15], which puts
// the sum in a binade whose unit is the half's; past 65504, infinity; the sign put back (a NaN stays NaN).
inline __m512d to_half(__m512d v) {
    const __m512i sign_bit = _mm512_set1_epi64(static_cast<long long>(0x8000000000000000ull));
    const __m512i sign = _mm512_and_si512(_mm512_castpd_si512(v), sign_bit);
    const __m512d a = _mm512_castsi512_pd(_mm512_andnot_si512(sign_bit, _mm512_castpd_si512(v)));
    const __m512d exponent = _mm512_min_pd(_mm512_set1_pd(15.0), _mm512_max_pd(_mm512_getexp_pd(a), _mm512_set1_pd(-14.0)));
    const __m512d shift = _mm512_scalef_pd(_mm512_set1_pd(1.5), _mm512_add_pd(exponent, _mm512_set1_pd(42.0)));
    __m512d r = _mm512_sub_pd(_mm512_add_pd(a, shift), shift);
    r = _mm512_mask_blend_pd(_mm512_cmp_pd_mask(r, _mm512_set1_pd(65504.0), _CMP_GT_OQ), r, _mm512_set1_pd(INFINITY));
    return _mm512_castsi512_pd(_mm512_or_si512(_mm512_castpd_si512(r), sign));
}

template <int Pixels>
void tile_avx512_pixels(const Fp16Tile& t) {
    __m512d acc[Pixels][2];
    for (int p = 0; p < Pixels; ++p) acc[p][0] = acc[p][1] = _mm512_setzero_pd();
    for (int tap = 0; tap < t.taps; ++tap) {
        const double* x = t.x64 + t.tap_offsets[tap];
        const double* w = t.w64 + static_cast<long>(tap) * t.channels * kFp16Outputs;
        for (int c = 0; c < t.channels; ++c) {
            const __m512d w0 = _mm512_loadu_pd(w + c * kFp16Outputs), w1 = _mm512_loadu_pd(w + c * kFp16Outputs + 8);
#pragma GCC unroll 8
            for (int p = 0; p < Pixels; ++p) {
                const __m512d value = _mm512_set1_pd(x[p * t.pixel_step + c]);
                acc[p][0] = to_half(_mm512_fmadd_pd(value, w0, acc[p][0]));
                acc[p][1] = to_half(_mm512_fmadd_pd(value, w1, acc[p][1]));
            }
        }
    }
    for (int p = 0; p < Pixels; ++p) {
        alignas(64) double lanes[kFp16Outputs];
        _mm512_store_pd(lanes, acc[p][0]);
        _mm512_store_pd(lanes + 8, acc[p][1]);
        for (int o = 0; o < t.outputs; ++o) store(t, o, p, static_cast<float>(lanes[o]));
    }
}

void tile_avx512(const Fp16Tile& t) {
    with_count<kFp16Pixels>(t.pixels, [&](auto pixels) { tile_avx512_pixels<decltype(pixels)::value>(t); });
}

}  // namespace

Fp16TileKernel fp16_tile_avx512() { return cpu_features().avx512f ? tile_avx512 : nullptr; }
Fp16TileKernel fp16_tile_neon() { return nullptr; }

}  // namespace edge

#pragma GCC pop_options

#elif defined(__aarch64__)
#include <arm_neon.h>

#pragma GCC push_options
#pragma GCC target("arch=armv8.2-a+fp16")

namespace edge {

namespace {

template <int Pixels>
void tile_neon_pixels(const Fp16Tile& t) {
    float16x8_t acc[Pixels][2];
    for (int p = 0; p < Pixels; ++p) acc[p][0] = acc[p][1] = vdupq_n_f16(0);
    for (int tap = 0; tap < t.taps; ++tap) {
        const __fp16* x = reinterpret_cast<const __fp16*>(t.x16) + t.tap_offsets[tap];
        const __fp16* w = reinterpret_cast<const __fp16*>(t.w16) + static_cast<long>(tap) * t.channels * kFp16Outputs;
        for (int c = 0; c < t.channels; ++c) {
            const float16x8_t w0 = vld1q_f16(w + c * kFp16Outputs), w1 = vld1q_f16(w + c * kFp16Outputs + 8);
            for (int p = 0; p < Pixels; ++p) {
                const float16x8_t value = vld1q_dup_f16(x + p * t.pixel_step + c);
                acc[p][0] = vfmaq_f16(acc[p][0], value, w0);  // acc + value * w, rounded once
                acc[p][1] = vfmaq_f16(acc[p][1], value, w1);
            }
        }
    }
    for (int p = 0; p < Pixels; ++p) {
        float lanes[kFp16Outputs];
        vst1q_f32(lanes, vcvt_f32_f16(vget_low_f16(acc[p][0])));
        vst1q_f32(lanes + 4, vcvt_high_f32_f16(acc[p][0]));
        vst1q_f32(lanes + 8, vcvt_f32_f16(vget_low_f16(acc[p][1])));
        vst1q_f32(lanes + 12, vcvt_high_f32_f16(acc[p][1]));
        for (int o = 0; o < t.outputs; ++o) store(t, o, p, lanes[o]);
    }
}

void tile_neon(const Fp16Tile& t) {
    with_count<kFp16Pixels>(t.pixels, [&](auto pixels) { tile_neon_pixels<decltype(pixels)::value>(t); });
}

}  // namespace

Fp16TileKernel fp16_tile_avx512() { return nullptr; }
Fp16TileKernel fp16_tile_neon() {
#ifndef HWCAP_ASIMDHP
#define HWCAP_ASIMDHP (1 << 10)
#endif
    return getauxval(AT_HWCAP) & HWCAP_ASIMDHP ? tile_neon : nullptr;
}

}  // namespace edge

#pragma GCC pop_options

#else

namespace edge {
Fp16TileKernel fp16_tile_avx512() { return nullptr; }
Fp16TileKernel fp16_tile_neon() { return nullptr; }
}  // namespace edge

#endif
