// The quantize op's AVX-512 VBMI row (quantize_row.h): per 16 pixels, each channel's codes in the scalar
// form's float32 order (the division, the clamp by max then min, which keeps its NaN and signed-zero choices,
// and the 1.5 * 2^23 rounding), packed to bytes; three channels are interleaved by one vpermb. Other channel
// counts, and a row's last pixels, run the scalar form.
#include "cpu_features.h"
#include "quantize_row.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vbmi")

namespace edge {

namespace {

struct GridLanes {
    __m512 scale, magic, low, high;
    __m512i zero;
};

inline __m128i codes16(const float* src, const GridLanes& g) {
    __m512 v = _mm512_div_ps(_mm512_loadu_ps(src), g.scale);
    v = _mm512_min_ps(_mm512_max_ps(v, g.low), g.high);
    const __m512i q = _mm512_cvttps_epi32(_mm512_sub_ps(_mm512_add_ps(v, g.magic), g.magic));
    return _mm512_cvtepi32_epi8(_mm512_add_epi32(q, g.zero));
}

void quantize_row_avx512(const float* x, size_t plane, int channels, int width, Grid grid, uint8_t* dst) {
    if (channels != 1 && channels != 3) return quantize_row(x, plane, channels, width, grid, dst);
    const GridLanes g{_mm512_set1_ps(grid.scale), _mm512_set1_ps(12582912.0f),
                      _mm512_set1_ps(static_cast<float>(grid.low - grid.zero)),
                      _mm512_set1_ps(static_cast<float>(grid.high - grid.zero)), _mm512_set1_epi32(grid.zero)};
    alignas(64) uint8_t order[64];  // byte j of three pixels' runs of 16: pixel j / 3, channel j % 3
    for (int j = 0; j < 64; ++j) order[j] = static_cast<uint8_t>(j < 48 ? j % 3 * 16 + j / 3 : 0);
    const __m512i interleave = _mm512_load_si512(order);
    int x0 = 0;
    for (; x0 + 16 <= width; x0 += 16) {
        if (channels == 1) {
            _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + x0), codes16(x + x0, g));
            continue;
        }
        __m512i three = _mm512_castsi128_si512(codes16(x + x0, g));
        three = _mm512_inserti32x4(three, codes16(x + plane + x0, g), 1);
        three = _mm512_inserti32x4(three, codes16(x + 2 * plane + x0, g), 2);
        _mm512_mask_storeu_epi8(dst + static_cast<size_t>(x0) * 3, (__mmask64{1} << 48) - 1,
                                _mm512_permutexvar_epi8(interleave, three));
    }
    if (x0 < width) quantize_row(x + x0, plane, channels, width - x0, grid, dst + static_cast<size_t>(x0) * channels);
}

}  // namespace

QuantizeRow quantize_row_vbmi() {
    const CpuFeatures& f = cpu_features();
    return f.avx512f && f.avx512bw && f.avx512vl && f.avx512vbmi ? quantize_row_avx512 : nullptr;
}

}  // namespace edge

#pragma GCC pop_options

#else

namespace edge {
QuantizeRow quantize_row_vbmi() { return nullptr; }
}  // namespace edge

#endif
