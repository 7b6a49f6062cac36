// The binary op's AVX-512 row kernel (binary.h): per 16 channels, the codes' floats gathered from the table,
// the operation with the gate, the division by the output scale and round_onto_grid's clamp-then-round, in
// the scalar loop's order (max and min keep its NaN and signed-zero choices), the tail masked.
#include "binary.h"
#include "cpu_features.h"

#include <cstring>

namespace edge {

bool affine_table(const float* table, int& zero, float& scale) {
    int found = -1;
    for (int q = 0; q < 256 && found < 0; ++q)
        if (table[q] == 0.0f) found = q;
    if (found < 0) return false;
    const float step = found < 255 ? table[found + 1] : -table[found - 1];
    for (int q = 0; q < 256; ++q) {
        const float expected = static_cast<float>(q - found) * step;
        if (std::memcmp(&expected, table + q, sizeof(float)) != 0) return false;
    }
    zero = found, scale = step;
    return true;
}

}  // namespace edge

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl")

namespace edge {

namespace {

template <BinaryOperation op>
inline __m512 apply16(__m512 a, __m512 b) {
    if constexpr (op == BinaryOperation::Add) return _mm512_add_ps(a, b);
    if constexpr (op == BinaryOperation::Sub) return _mm512_sub_ps(a, b);
    if constexpr (op == BinaryOperation::Mul) return _mm512_mul_ps(a, b);
    return _mm512_div_ps(a, b);
}

template <BinaryOperation op>
void gated_row(const GatedRow& row, const uint8_t* codes, uint8_t* out) {
    const __m512 scale = _mm512_set1_ps(row.grid.scale), magic = _mm512_set1_ps(12582912.0f);
    const __m512 low = _mm512_set1_ps(static_cast<float>(row.grid.low - row.grid.zero));
    const __m512 high = _mm512_set1_ps(static_cast<float>(row.grid.high - row.grid.zero));
    const __m512i zero = _mm512_set1_epi32(row.grid.zero);
    const __m512i table_zero = _mm512_set1_epi32(row.table_zero);
    const __m512 table_scale = _mm512_set1_ps(row.table_scale);
    const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for (int c = 0; c < row.channels; c += 16) {
        const __mmask16 mask = row.channels - c >= 16 ? __mmask16(0xffff) : __mmask16((1u << (row.channels - c)) - 1);
        __m512i index = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(mask, codes + c));
        if (row.per_channel_table)
            index = _mm512_add_epi32(index, _mm512_slli_epi32(_mm512_add_epi32(lanes, _mm512_set1_epi32(c)), 8));
        const __m512 value = row.affine ? _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(index, table_zero)), table_scale)
                                        : _mm512_mask_i32gather_ps(_mm512_setzero_ps(), mask, index, row.table, 4);
        const __m512 gate = _mm512_maskz_loadu_ps(mask, row.gate + c);
        __m512 v = _mm512_div_ps(row.gate_first ? apply16<op>(gate, value) : apply16<op>(value, gate), scale);
        v = _mm512_min_ps(_mm512_max_ps(v, low), high);
        const __m512i q = _mm512_add_epi32(_mm512_cvttps_epi32(_mm512_sub_ps(_mm512_add_ps(v, magic), magic)), zero);
        _mm_mask_storeu_epi8(out + c, mask, _mm512_cvtepi32_epi8(q));
    }
}

void gated_row_avx512_kernel(BinaryOperation op, const GatedRow& row, const uint8_t* codes, uint8_t* out) {
    switch (op) {
        case BinaryOperation::Add: return gated_row<BinaryOperation::Add>(row, codes, out);
        case BinaryOperation::Sub: return gated_row<BinaryOperation::Sub>(row, codes, out);
        case BinaryOperation::Mul: return gated_row<BinaryOperation::Mul>(row, codes, out);
        case BinaryOperation::Div: return gated_row<BinaryOperation::Div>(row, codes, out);
    }
}

}  // namespace

GatedRowKernel gated_row_avx512() {
    const CpuFeatures& f = cpu_features();
    return f.avx512f && f.avx512bw && f.avx512vl ? gated_row_avx512_kernel : nullptr;
}

}  // namespace edge

#pragma GCC pop_options

#else

namespace edge {
GatedRowKernel gated_row_avx512() { return nullptr; }
}  // namespace edge

#endif
