// The AVX512_VBMI byte lookup (lookup.h): the table's 256 bytes in four registers; per 64 codes, vpermi2b
// picks from the low and from the high 128 entries by each code's low 7 bits, and the code's top bit chooses
// between the two. The tail of fewer than 64 codes runs masked.
#include "cpu_features.h"
#include "lookup.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vbmi")

namespace edge {

namespace {

inline __m512i looked_up(__m512i codes, __m512i t0, __m512i t1, __m512i t2, __m512i t3) {
    const __m512i low = _mm512_permutex2var_epi8(t0, codes, t1);
    const __m512i high = _mm512_permutex2var_epi8(t2, codes, t3);
    return _mm512_mask_blend_epi8(_mm512_movepi8_mask(codes), low, high);
}

void lookup_vbmi(const uint8_t* table, const uint8_t* in, uint8_t* out, size_t count) {
    const __m512i t0 = _mm512_loadu_si512(table), t1 = _mm512_loadu_si512(table + 64);
    const __m512i t2 = _mm512_loadu_si512(table + 128), t3 = _mm512_loadu_si512(table + 192);
    size_t i = 0;
    for (; i + 128 <= count; i += 128) {
        const __m512i a = _mm512_loadu_si512(in + i), b = _mm512_loadu_si512(in + i + 64);
        _mm512_storeu_si512(out + i, looked_up(a, t0, t1, t2, t3));
        _mm512_storeu_si512(out + i + 64, looked_up(b, t0, t1, t2, t3));
    }
    for (; i < count; i += 64) {
        const __mmask64 mask = count - i >= 64 ? ~__mmask64{0} : (__mmask64{1} << (count - i)) - 1;
        const __m512i codes = _mm512_maskz_loadu_epi8(mask, in + i);
        _mm512_mask_storeu_epi8(out + i, mask, looked_up(codes, t0, t1, t2, t3));
    }
}

}  // namespace

LookupKernel lookup_avx512vbmi() {
    const CpuFeatures& f = cpu_features();
    return f.avx512f && f.avx512bw && f.avx512vbmi ? lookup_vbmi : nullptr;
}

}  // namespace edge

#pragma GCC pop_options

#else

namespace edge {
LookupKernel lookup_avx512vbmi() { return nullptr; }
}  // namespace edge

#endif
