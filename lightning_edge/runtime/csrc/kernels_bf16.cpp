// The bf16_conv tile GEMM (bf16.h): the exact float32 form for every CPU, and vdpbf16ps for AVX512_BF16.
//
// The AVX-512 kernel holds kBf16Rows x 3 accumulators of 16 pixels: per pair of the reduction it loads the
// tile's three vectors of packed inputs once and broadcasts each row's weight pair, so one vdpbf16ps does 32
// multiply-adds and the inputs are read once per 8 rows. vdpbf16ps adds the odd element's product, then the
// even one's, each rounded to float32 with denormal results flushed; the exact form spells out the same steps.
#include <algorithm>
#include <cfloat>

#include "bf16.h"
#include "cpu_features.h"

namespace edge {

namespace {

inline float flushed(float value) { return std::fabs(value) < FLT_MIN ? std::copysign(0.0f, value) : value; }

inline float clamped(float value, float low, float high) {
    value = value < low ? low : value;
    return high < value ? high : value;
}

}  // namespace

void bf16_pairs_exact(const float* even, const float* odd, uint32_t* out, int count) {
    for (int i = 0; i < count; ++i) out[i] = bf16_pair(even[i], odd ? odd[i] : 0.0f);
}

void bf16_round_exact(const float* in, float* out, size_t count) {
    for (size_t i = 0; i < count; ++i) out[i] = bf16_value(bf16_bits(in[i]));
}

void bf16_tile_exact(const Bf16Tile& t) {
    for (int r = 0; r < t.rows; ++r) {
        const uint32_t* w = t.w + static_cast<long>(r / kBf16Rows) * t.pairs * kBf16Rows + r % kBf16Rows;
        const float bias = t.bias ? t.bias[r] : 0.0f;
        float* out = t.out + r * t.row_stride;
        const float* skip = t.skip ? t.skip + r * t.row_stride : nullptr;
        long written = 0;
        for (int p = 0; p < t.pixels; ++p) {
            if (!(t.keep >> p & 1)) continue;
            float acc = 0.0f;
            for (int j = 0; j < t.pairs; ++j) {
                const uint32_t x = t.x[t.offsets[j] + p], weight = w[static_cast<long>(j) * kBf16Rows];
                acc = flushed(std::fma(bf16_value(static_cast<uint16_t>(x >> 16)), bf16_value(static_cast<uint16_t>(weight >> 16)), acc));
                acc = flushed(std::fma(bf16_value(static_cast<uint16_t>(x)), bf16_value(static_cast<uint16_t>(weight)), acc));
            }
            float y = acc + bias;
            if (skip) y = y + skip[written];
            out[written++] = clamped(y, t.low, t.high);
        }
    }
}

}  // namespace edge

#if defined(__x86_64__)
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx2,avx512f,avx512bw,avx512vl,avx512bf16")

namespace edge {

namespace {

template <int Rows>
void rows_avx512(const Bf16Tile& t, int row0) {
    __m512 acc[Rows][3];
#pragma GCC unroll 8
    for (int r = 0; r < Rows; ++r) acc[r][0] = acc[r][1] = acc[r][2] = _mm512_setzero_ps();
    const uint32_t* w = t.w + static_cast<long>(row0 / kBf16Rows) * t.pairs * kBf16Rows;
    for (int j = 0; j < t.pairs; ++j) {
        const uint32_t* x = t.x + t.offsets[j];
        const __m512bh x0 = (__m512bh)_mm512_loadu_si512(x), x1 = (__m512bh)_mm512_loadu_si512(x + 16),
                       x2 = (__m512bh)_mm512_loadu_si512(x + 32);
#pragma GCC unroll 8
        for (int r = 0; r < Rows; ++r) {
            const __m512bh weight = (__m512bh)_mm512_set1_epi32(static_cast<int>(w[static_cast<long>(j) * kBf16Rows + r]));
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], x0, weight);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], x1, weight);
            acc[r][2] = _mm512_dpbf16_ps(acc[r][2], x2, weight);
        }
    }
    const __m512 low = _mm512_set1_ps(t.low), high = _mm512_set1_ps(t.high);
    const uint64_t valid = t.pixels >= 64 ? ~uint64_t{0} : (uint64_t{1} << t.pixels) - 1;
#pragma GCC unroll 8
    for (int r = 0; r < Rows; ++r) {
        const __m512 bias = _mm512_set1_ps(t.bias ? t.bias[row0 + r] : 0.0f);
        float* out = t.out + (row0 + r) * t.row_stride;
        const float* skip = t.skip ? t.skip + (row0 + r) * t.row_stride : nullptr;
        int written = 0;
        for (int v = 0; v < 3; ++v) {
            const __mmask16 keep = static_cast<__mmask16>((t.keep & valid) >> (16 * v));
            if (!keep) continue;
            const int count = __builtin_popcount(keep);
            const __mmask16 first = count >= 16 ? __mmask16(0xffff) : __mmask16((1u << count) - 1);
            __m512 y = _mm512_add_ps(acc[r][v], bias);
            // The kept lanes' skip values, consecutive in memory, spread to their lanes (register expand and
            // compress: their memory forms are slow on some CPUs).
            if (skip) y = _mm512_add_ps(y, _mm512_maskz_expand_ps(keep, _mm512_maskz_loadu_ps(first, skip + written)));
            // max(low, y) and min(high, y) return y where y is NaN, as the exact form's comparisons do.
            y = _mm512_min_ps(high, _mm512_max_ps(low, y));
            _mm512_mask_storeu_ps(out + written, first, _mm512_maskz_compress_ps(keep, y));
            written += count;
        }
    }
}

void tile_avx512(const Bf16Tile& t) {
    int row = 0;
    for (; row + kBf16Rows <= t.rows; row += kBf16Rows) rows_avx512<kBf16Rows>(t, row);
    switch (t.rows - row) {
        case 7: rows_avx512<7>(t, row); break;
        case 6: rows_avx512<6>(t, row); break;
        case 5: rows_avx512<5>(t, row); break;
        case 4: rows_avx512<4>(t, row); break;
        case 3: rows_avx512<3>(t, row); break;
        case 2: rows_avx512<2>(t, row); break;
        case 1: rows_avx512<1>(t, row); break;
        default: break;
    }
}

// vcvtne2ps2bf16 puts the second operand's 16 conversions in the low half; vpermw interleaves the halves.
void pairs_avx512(const float* even, const float* odd, uint32_t* out, int count) {
    alignas(64) static const uint16_t interleave[32] = {0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23,
                                                         8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
    const __m512i order = _mm512_load_si512(interleave);
    for (int i = 0; i < count; i += 16) {
        const int left = count - i;
        const __mmask16 mask = left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1);
        const __m512 e = _mm512_maskz_loadu_ps(mask, even + i);
        const __m512 o = odd ? _mm512_maskz_loadu_ps(mask, odd + i) : _mm512_setzero_ps();
        const __m512i words = _mm512_permutexvar_epi16(order, (__m512i)_mm512_cvtne2ps_pbh(o, e));
        _mm512_mask_storeu_epi32(out + i, mask, words);
    }
}

// Output pixels in lanes, 16 of a row at a time; a stride-2 row gathers the even words of two loads. The
// accumulator chain per pixel is rule 20's: +0, then one fma per tap (the caller's Bf16FlushScope flushes
// denormal results, as vdpbf16ps does; inputs are bfloat16 values, never denormal).
// Input columns [column, column + 16 * stride) of `row` at every stride-th one into lanes, zero outside
// [0, in_w) (masked loads never touch the columns they skip).
template <int Stride>  // 1, 2, or 0 for any other stride
inline __m512 depthwise_values(const float* row, int column, int in_w, int stride, int lanes) {
    auto range = [&](int begin) {  // mask of the 16 columns [begin, begin + 16) that lie inside
        const int low = std::max(0, -begin), high = std::min(16, in_w - begin);
        return high <= low ? __mmask16(0) : __mmask16(((1u << (high - low)) - 1) << low);
    };
    if (Stride == 1) {
        const __mmask16 lanes_mask = lanes >= 16 ? __mmask16(0xffff) : __mmask16((1u << lanes) - 1);
        return _mm512_maskz_loadu_ps(range(column) & lanes_mask, row + column);
    }
    if (Stride == 2) {
        const __m512i evens = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
        const int used = 2 * std::min(lanes, 16) - 1;  // columns the lanes read: [column, column + used)
        const __mmask16 first = range(column) & (used >= 16 ? __mmask16(0xffff) : __mmask16((1u << used) - 1));
        const __mmask16 second = used <= 16 ? __mmask16(0) : range(column + 16) & __mmask16((1u << (used - 16)) - 1);
        return _mm512_permutex2var_ps(_mm512_maskz_loadu_ps(first, row + column), evens,
                                      _mm512_maskz_loadu_ps(second, row + column + 16));
    }
    alignas(64) float gathered[16] = {};
    for (int i = 0; i < std::min(lanes, 16); ++i) {
        const int at = column + i * stride;
        if (at >= 0 && at < in_w) gathered[i] = row[at];
    }
    return _mm512_load_ps(gathered);
}

// Vectors [x, x + 16 * Count) of output row y: Count independent fma chains, so the taps' fma latency overlaps.
template <int Stride, int Count>
inline void depthwise_vectors(const Bf16DepthwisePlane& d, int y, int x) {
    __m512 acc[Count];
    __mmask16 mask[Count];
    int left[Count];
    for (int v = 0; v < Count; ++v) {
        acc[v] = _mm512_setzero_ps();
        left[v] = d.out_w - x - 16 * v;
        mask[v] = left[v] >= 16 ? __mmask16(0xffff) : __mmask16((1u << left[v]) - 1);
    }
    for (int a = 0; a < d.kernel_h; ++a) {
        const int input_row = y * d.stride_h + a * d.dilation_h - d.pad_top;
        if (input_row < 0 || input_row >= d.in_h) continue;  // a padding row adds +0 products: acc unchanged
        const float* row = d.input + static_cast<long>(input_row) * d.in_w;
        for (int b = 0; b < d.kernel_w; ++b) {
            const __m512 weight = _mm512_set1_ps(d.weights[a * d.kernel_w + b]);
            const int column = x * d.stride_w + b * d.dilation_w - d.pad_left;
#pragma GCC unroll 4
            for (int v = 0; v < Count; ++v)
                acc[v] = _mm512_fmadd_ps(depthwise_values<Stride>(row, column + 16 * v * d.stride_w, d.in_w, d.stride_w, left[v]),
                                         weight, acc[v]);
        }
    }
    const __m512 bias = _mm512_set1_ps(d.bias), low = _mm512_set1_ps(d.low), high = _mm512_set1_ps(d.high);
    for (int v = 0; v < Count; ++v) {
        const long at = static_cast<long>(y) * d.out_w + x + 16 * v;
        __m512 out = _mm512_add_ps(acc[v], bias);
        if (d.skip) out = _mm512_add_ps(out, _mm512_maskz_loadu_ps(mask[v], d.skip + at));
        out = _mm512_min_ps(high, _mm512_max_ps(low, out));
        _mm512_mask_storeu_ps(d.out + at, mask[v], out);
    }
}

template <int Stride>
void depthwise_rows(const Bf16DepthwisePlane& d) {
    for (int y = 0; y < d.out_h; ++y) {
        int x = 0;
        for (; x + 64 <= d.out_w; x += 64) depthwise_vectors<Stride, 4>(d, y, x);
        const int rest = (d.out_w - x + 15) / 16;  // 1 to 4 vectors left, the last one partial
        if (rest == 4) depthwise_vectors<Stride, 4>(d, y, x);
        else if (rest == 3) depthwise_vectors<Stride, 3>(d, y, x);
        else if (rest == 2) depthwise_vectors<Stride, 2>(d, y, x);
        else if (rest == 1) depthwise_vectors<Stride, 1>(d, y, x);
    }
}

void round_avx512(const float* in, float* out, size_t count) {
    for (size_t i = 0; i < count; i += 16) {
        const size_t left = count - i;
        const __mmask16 mask = left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1);
        const __m256i bits = (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(mask, in + i));
        _mm512_mask_storeu_ps(out + i, mask, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16)));
    }
}

void depthwise_avx512(const Bf16DepthwisePlane& d) {
    if (d.stride_w == 1) depthwise_rows<1>(d);
    else if (d.stride_w == 2) depthwise_rows<2>(d);
    else depthwise_rows<0>(d);
}

}  // namespace

Bf16RoundKernel bf16_round_avx512() {
    const CpuFeatures& f = cpu_features();
    return f.avx512f && f.avx512bw && f.avx512_bf16 ? round_avx512 : nullptr;
}

Bf16FlushScope::Bf16FlushScope() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | 0x8000u); }
Bf16FlushScope::~Bf16FlushScope() { _mm_setcsr(saved_); }

Bf16DepthwiseKernel bf16_depthwise_avx512() {
    const CpuFeatures& f = cpu_features();
    return f.avx512f ? depthwise_avx512 : nullptr;
}

Bf16PairKernel bf16_pairs_avx512() {
    const CpuFeatures& f = cpu_features();
    return f.avx512f && f.avx512bw && f.avx512_bf16 ? pairs_avx512 : nullptr;
}

Bf16TileKernel bf16_tile_avx512() {
    const CpuFeatures& f = cpu_features();
    return f.avx512f && f.avx512bw && f.avx512_bf16 ? tile_avx512 : nullptr;
}

}  // namespace edge

#pragma GCC pop_options

#else

namespace edge {
Bf16TileKernel bf16_tile_avx512() { return nullptr; }
Bf16PairKernel bf16_pairs_avx512() { return nullptr; }
Bf16DepthwiseKernel bf16_depthwise_avx512() { return nullptr; }
Bf16RoundKernel bf16_round_avx512() { return nullptr; }
Bf16FlushScope::Bf16FlushScope() {}
Bf16FlushScope::~Bf16FlushScope() {}
}  // namespace edge

#endif
