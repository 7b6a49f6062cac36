// The bf16_conv kernels (bf16.h): the tile GEMM and the depthwise plane, each in the exact float32 form for
// every CPU and with vdpbf16ps / AVX-512 fma where the CPU has AVX512_BF16; and the row conversions they read.
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

void bf16_widen_exact(const uint32_t* words, int half, float* out, size_t count) {
    for (size_t i = 0; i < count; ++i) out[i] = bf16_value(static_cast<uint16_t>(words[i] >> (16 * half)));
}

void bf16_split_exact(const float* in, float* even, float* odd, int count) {
    for (int i = 0; i < count; ++i) even[i] = in[2 * i], odd[i] = in[2 * i + 1];
}

void bf16_depthwise_exact(const Bf16DepthwisePlane& d) {
    for (int y = 0; y < d.out_h; ++y) {
        const float* origin = d.padded + static_cast<long>(y) * d.stride_h * d.row_floats;
        for (int x = 0; x < d.out_w; ++x) {
            float acc = 0.0f;
            for (int t = 0; t < d.taps; ++t) acc = flushed(std::fma(origin[d.offsets[t] + x], d.weights[t], acc));
            const long at = static_cast<long>(y) * d.out_w + x;
            float value = acc + d.bias;
            if (d.skip) value = value + d.skip[at];
            value = clamped(value, d.low, d.high);
            if (d.out_bf16) d.out_bf16[2 * at] = bf16_bits(value);
            else d.out[at] = value;
        }
    }
}

void bf16_tile_exact(const Bf16Tile& t) {
    for (int r = 0; r < t.rows; ++r) {
        const uint32_t* w = t.w + static_cast<long>(r / kBf16Rows) * t.pairs * kBf16Rows + r % kBf16Rows;
        const float bias = t.bias ? t.bias[r] : 0.0f;
        float* out = t.out_bf16 ? nullptr : t.out + r * t.row_stride;
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
            y = clamped(y, t.low, t.high);
            if (t.out_bf16) t.out_bf16[2 * (r / 2 * t.row_stride + written++) + r % 2] = bf16_bits(y);
            else out[written++] = y;
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

// The halfword order that turns vcvtne2ps2bf16(odd, even) into 16 words (even[i] | odd[i] << 16).
alignas(64) constexpr uint16_t kBf16Interleave[32] = {0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23,
                                                      8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};

// Row `row`'s accumulator for the kept lanes `keep` of a vector whose first kept pixel is the row's
// `written`-th output: bias, skip, clamp, its kept lanes moved to the front (`first` masks them there).
__attribute__((always_inline)) inline __m512 finished(const Bf16Tile& t, __m512 acc, int row, int written, __mmask16 keep,
                                                      __mmask16 first, __m512 low, __m512 high) {
    __m512 y = _mm512_add_ps(acc, _mm512_set1_ps(t.bias ? t.bias[row] : 0.0f));
    const bool whole = keep == 0xffff;  // no lane dropped: no expand or compress
    // The kept lanes' skip values, consecutive in memory, spread to their lanes (register expand and compress:
    // their memory forms are slow on some CPUs).
    if (t.skip) {
        const __m512 other = _mm512_maskz_loadu_ps(first, t.skip + static_cast<long>(row) * t.row_stride + written);
        y = _mm512_add_ps(y, whole ? other : _mm512_maskz_expand_ps(keep, other));
    }
    // max(low, y) and min(high, y) return y where y is NaN, as the exact form's comparisons do.
    y = _mm512_min_ps(high, _mm512_max_ps(low, y));
    return whole ? y : _mm512_maskz_compress_ps(keep, y);
}

// Rows x Vectors accumulators of 16 pixels (a tile of up to 16 * Vectors pixels: a short last tile computes
// only the vectors it has).
template <int Rows, int Vectors>
void rows_avx512(const Bf16Tile& t, int row0) {
    __m512 acc[Rows][Vectors];
#pragma GCC unroll 8
    for (int r = 0; r < Rows; ++r)
#pragma GCC unroll 4
        for (int v = 0; v < Vectors; ++v) acc[r][v] = _mm512_setzero_ps();
    const uint32_t* w = t.w + static_cast<long>(row0 / kBf16Rows) * t.pairs * kBf16Rows + row0 % kBf16Rows;
    // Only the tile's pixels are read: a tensor read in place has nothing past its last plane.
    const uint64_t valid = t.pixels >= 64 ? ~uint64_t{0} : (uint64_t{1} << t.pixels) - 1;
    __mmask16 in[Vectors];
#pragma GCC unroll 4
    for (int v = 0; v < Vectors; ++v) in[v] = static_cast<__mmask16>(valid >> (16 * v));
    for (int j = 0; j < t.pairs; ++j) {
        const uint32_t* x = t.x + t.offsets[j];
        __m512bh words[Vectors];
#pragma GCC unroll 4
        for (int v = 0; v < Vectors; ++v) words[v] = (__m512bh)_mm512_maskz_loadu_epi32(in[v], x + 16 * v);
#pragma GCC unroll 8
        for (int r = 0; r < Rows; ++r) {
            const __m512bh weight = (__m512bh)_mm512_set1_epi32(static_cast<int>(w[static_cast<long>(j) * kBf16Rows + r]));
#pragma GCC unroll 4
            for (int v = 0; v < Vectors; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], words[v], weight);
        }
    }
    const __m512 low = _mm512_set1_ps(t.low), high = _mm512_set1_ps(t.high);
    const __m512i interleave = _mm512_load_si512(kBf16Interleave);
    int written = 0;
#pragma GCC unroll 4
    for (int v = 0; v < Vectors; ++v) {
        const __mmask16 keep = static_cast<__mmask16>((t.keep & valid) >> (16 * v));
        if (!keep) continue;
        const int count = __builtin_popcount(keep);
        const __mmask16 first = count >= 16 ? __mmask16(0xffff) : __mmask16((1u << count) - 1);
        if (t.out_bf16) {  // rows 2i and 2i + 1 as one vector of words (vcvtne2ps2bf16 puts its second operand low)
            uint32_t* words = reinterpret_cast<uint32_t*>(t.out_bf16) + written;
#pragma GCC unroll 4
            for (int r = 0; r + 1 < Rows; r += 2) {
                const __m512 even = finished(t, acc[r][v], row0 + r, written, keep, first, low, high);
                const __m512 odd = finished(t, acc[r + 1][v], row0 + r + 1, written, keep, first, low, high);
                const __m512i pair = _mm512_permutexvar_epi16(interleave, (__m512i)_mm512_cvtne2ps_pbh(odd, even));
                _mm512_mask_storeu_epi32(words + static_cast<long>(row0 + r) / 2 * t.row_stride, first, pair);
            }
        } else {
#pragma GCC unroll 8
            for (int r = 0; r < Rows; ++r)
                _mm512_mask_storeu_ps(t.out + static_cast<long>(row0 + r) * t.row_stride + written, first,
                                      finished(t, acc[r][v], row0 + r, written, keep, first, low, high));
        }
        written += count;
    }
}

template <int Vectors>
void tile_rows_avx512(const Bf16Tile& t) {
    int row = 0;
    for (; row + kBf16Rows <= t.rows; row += kBf16Rows) rows_avx512<kBf16Rows, Vectors>(t, row);
    switch (t.rows - row) {
        case 7: rows_avx512<7, Vectors>(t, row); break;
        case 6: rows_avx512<6, Vectors>(t, row); break;
        case 5: rows_avx512<5, Vectors>(t, row); break;
        case 4: rows_avx512<4, Vectors>(t, row); break;
        case 3: rows_avx512<3, Vectors>(t, row); break;
        case 2: rows_avx512<2, Vectors>(t, row); break;
        case 1: rows_avx512<1, Vectors>(t, row); break;
        default: break;
    }
}

void tile_avx512(const Bf16Tile& t) {
    if (t.pixels <= 16) {
        tile_rows_avx512<1>(t);
    } else if (t.pixels <= 32) {
        tile_rows_avx512<2>(t);
    } else if (t.pixels <= kBf16TilePixels) {
        tile_rows_avx512<3>(t);
    } else {  // a long last tile: four vectors, so four rows at a time
        int row = 0;
        for (; row + 4 <= t.rows; row += 4) rows_avx512<4, 4>(t, row);
        switch (t.rows - row) {
            case 3: rows_avx512<3, 4>(t, row); break;
            case 2: rows_avx512<2, 4>(t, row); break;
            case 1: rows_avx512<1, 4>(t, row); break;
            default: break;
        }
    }
}

// vcvtne2ps2bf16 puts the second operand's 16 conversions in the low half; vpermw interleaves the halves.
void pairs_avx512(const float* even, const float* odd, uint32_t* out, int count) {
    const __m512i order = _mm512_load_si512(kBf16Interleave);
    for (int i = 0; i < count; i += 16) {
        const int left = count - i;
        const __mmask16 mask = left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1);
        const __m512 e = _mm512_maskz_loadu_ps(mask, even + i);
        const __m512 o = odd ? _mm512_maskz_loadu_ps(mask, odd + i) : _mm512_setzero_ps();
        const __m512i words = _mm512_permutexvar_epi16(order, (__m512i)_mm512_cvtne2ps_pbh(o, e));
        _mm512_mask_storeu_epi32(out + i, mask, words);
    }
}

// 16 bfloat16 values into every other halfword from `at` (one channel's half of the channel-pairs layout),
// the lanes of `mask` only.
inline void store_half(uint16_t* at, __mmask16 mask, __m256bh bits) {
    uint32_t spread = mask;  // lane i's bit moved to bit 2i
    spread = (spread | spread << 8) & 0x00ff00ffu, spread = (spread | spread << 4) & 0x0f0f0f0fu;
    spread = (spread | spread << 2) & 0x33333333u, spread = (spread | spread << 1) & 0x55555555u;
    _mm512_mask_storeu_epi16(at, spread, _mm512_cvtepu16_epi32((__m256i)bits));
}

// The register barrier that keeps the compiler from moving float arithmetic across an MXCSR write (GCC does not
// model MXCSR as an input of float instructions).
template <int Count>
inline void pinned(__m512 (&values)[Count]) {
    for (int v = 0; v < Count; ++v) asm volatile("" : "+v"(values[v]));
}

// Vectors [x, x + 16 * Count) of output rows [y, y + Rows) of a depthwise plane: Rows x Count independent fma
// chains (so the taps' latency overlaps; narrow planes take several rows at once) with MXCSR's flush-to-zero on
// (vdpbf16ps's flush of every step), then the epilogue under `csr`, plain float32 (rule 20 adds the bias and
// skip with denormals kept). A pair of MXCSR writes costs about 2 ns here, against the block's 9 to 72 fmas.
template <int Rows, int Count>
inline void depthwise_block(const Bf16DepthwisePlane& d, unsigned csr, int y, int x) {
    constexpr int kChains = Rows * Count;
    __m512 acc[kChains];
    for (int c = 0; c < kChains; ++c) acc[c] = _mm512_setzero_ps();
    const float* origin = d.padded + static_cast<long>(y) * d.stride_h * d.row_floats + x;
    const long row_step = static_cast<long>(d.stride_h) * d.row_floats;
    _mm_setcsr(csr | 0x8000u);
    pinned(acc);
    for (int t = 0; t < d.taps; ++t) {
        const __m512 weight = _mm512_set1_ps(d.weights[t]);
        const float* at = origin + d.offsets[t];
#pragma GCC unroll 8
        for (int c = 0; c < kChains; ++c)
            acc[c] = _mm512_fmadd_ps(_mm512_loadu_ps(at + c / Count * row_step + 16 * (c % Count)), weight, acc[c]);
    }
    pinned(acc);
    _mm_setcsr(csr);
    pinned(acc);
    const __m512 bias = _mm512_set1_ps(d.bias), low = _mm512_set1_ps(d.low), high = _mm512_set1_ps(d.high);
#pragma GCC unroll 8
    for (int c = 0; c < kChains; ++c) {
        const int v = c % Count, left = d.out_w - x - 16 * v;
        const __mmask16 mask = left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1);
        const long at = static_cast<long>(y + c / Count) * d.out_w + x + 16 * v;
        __m512 out = _mm512_add_ps(acc[c], bias);
        if (d.skip) out = _mm512_add_ps(out, _mm512_maskz_loadu_ps(mask, d.skip + at));
        // max(low, y) and min(high, y) return y where y is NaN, as the exact form's comparisons do.
        out = _mm512_min_ps(high, _mm512_max_ps(low, out));
        if (d.out_bf16) store_half(d.out_bf16 + 2 * at, mask, _mm512_cvtneps_pbh(out));
        else _mm512_mask_storeu_ps(d.out + at, mask, out);
    }
}

// The last `left` (< Rows) rows from y, in one block.
template <int Rows, int Count>
inline void depthwise_tail(const Bf16DepthwisePlane& d, unsigned csr, int y, int left) {
    if constexpr (Rows > 0) {
        if (left == Rows) depthwise_block<Rows, Count>(d, csr, y, 0);
        else depthwise_tail<Rows - 1, Count>(d, csr, y, left);
    }
}

// A plane of Count vectors per row (out_w <= 16 * Count), Rows rows a block.
template <int Rows, int Count>
void depthwise_narrow(const Bf16DepthwisePlane& d, unsigned csr) {
    int y = 0;
    for (; y + Rows <= d.out_h; y += Rows) depthwise_block<Rows, Count>(d, csr, y, 0);
    depthwise_tail<Rows - 1, Count>(d, csr, y, d.out_h - y);
}

void depthwise_avx512(const Bf16DepthwisePlane& d) {
    // MXCSR as found, and without flush-to-zero or denormals-are-zero: the plain float32 of the epilogue.
    const unsigned saved = _mm_getcsr(), csr = saved & ~0x8040u;
    switch ((d.out_w + 15) / 16) {  // about 8 chains a block
        case 1: depthwise_narrow<8, 1>(d, csr); break;
        case 2: depthwise_narrow<4, 2>(d, csr); break;
        case 3: depthwise_narrow<2, 3>(d, csr); break;
        case 4: depthwise_narrow<2, 4>(d, csr); break;
        default:
            for (int y = 0; y < d.out_h; ++y) {
                int x = 0;
                for (; x + 128 <= d.out_w; x += 128) depthwise_block<1, 8>(d, csr, y, x);
                switch ((d.out_w - x + 15) / 16) {  // the 0 to 8 vectors left, the last one partial
                    case 8: depthwise_block<1, 8>(d, csr, y, x); break;
                    case 7: depthwise_block<1, 7>(d, csr, y, x); break;
                    case 6: depthwise_block<1, 6>(d, csr, y, x); break;
                    case 5: depthwise_block<1, 5>(d, csr, y, x); break;
                    case 4: depthwise_block<1, 4>(d, csr, y, x); break;
                    case 3: depthwise_block<1, 3>(d, csr, y, x); break;
                    case 2: depthwise_block<1, 2>(d, csr, y, x); break;
                    case 1: depthwise_block<1, 1>(d, csr, y, x); break;
                    default: break;
                }
            }
    }
    _mm_setcsr(saved);
}

// The lanes [begin, end) of 16, clipped to the vector.
inline __mmask16 lanes(int begin, int end) {
    begin = std::max(begin, 0), end = std::min(end, 16);
    return begin >= end ? __mmask16(0) : __mmask16(((1u << (end - begin)) - 1) << begin);
}

// One channel's result of a depthwise block: bias, skip (or nullptr), clamp, in plain float32.
__attribute__((always_inline)) inline __m512 depthwise_result(__m512 acc, float bias, const float* skip, long at,
                                                              __mmask16 mask, __m512 low, __m512 high) {
    __m512 y = _mm512_add_ps(acc, _mm512_set1_ps(bias));
    if (skip) y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(mask, skip + at));
    // max(low, y) and min(high, y) return y where y is NaN, as the exact form's comparisons do.
    return _mm512_min_ps(high, _mm512_max_ps(low, y));
}

// The end of a depthwise pair block: flush-to-zero off (MXCSR back to `csr`, the accumulators pinned on both
// sides of the write), then each row's two channels finished in plain float32 and stored.
template <int Rows>
__attribute__((always_inline)) inline void pair_results(const Bf16DepthwisePairs& d, unsigned csr, __m512 (&acc)[2 * Rows], int y, int x0) {
#pragma GCC unroll 16
    for (int c = 0; c < 2 * Rows; ++c) asm volatile("" : "+v"(acc[c]));
    _mm_setcsr(csr);
#pragma GCC unroll 16
    for (int c = 0; c < 2 * Rows; ++c) asm volatile("" : "+v"(acc[c]));
    const __m512 low = _mm512_set1_ps(d.low), high = _mm512_set1_ps(d.high);
    const __m512i interleave = _mm512_load_si512(kBf16Interleave);
    const __mmask16 mask = lanes(0, d.out_w - x0);
#pragma GCC unroll 8
    for (int r = 0; r < Rows; ++r) {
        const long at = static_cast<long>(y + r) * d.out_w + x0;
        const __m512 even = depthwise_result(acc[2 * r], d.bias[0], d.skip[0], at, mask, low, high);
        const __m512 odd = depthwise_result(acc[2 * r + 1], d.bias[1], d.skip[1], at, mask, low, high);
        if (d.pairs) {
            _mm512_mask_storeu_epi32(d.pairs + at, mask, _mm512_permutexvar_epi16(interleave, (__m512i)_mm512_cvtne2ps_pbh(odd, even)));
        } else {
            _mm512_mask_storeu_ps(d.out[0] + at, mask, even);
            _mm512_mask_storeu_ps(d.out[1] + at, mask, odd);
        }
    }
}

// Rows [y, y + Rows) x the 16 columns from x0 of a depthwise channel pair, Stride its column stride (any kernel
// size, known when the plane is run): 2 x Rows fma chains under flush-to-zero, each
// tap's words loaded once for both channels (masked to the input's columns, none for rows outside it), the
// epilogue in plain float32 under `csr`.
template <int Rows, int Stride>
void pairs_block(const Bf16DepthwisePairs& d, unsigned csr, int y, int x0) {
    __m512 acc[2 * Rows];
#pragma GCC unroll 16
    for (int c = 0; c < 2 * Rows; ++c) acc[c] = _mm512_setzero_ps();
    const __m512i high_half = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
    const __m512i evens = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const int in_w = d.in_w, kernel_w = d.kernel_w, origin = x0 * Stride - d.pad_left;
    _mm_setcsr(csr | 0x8000u);
#pragma GCC unroll 16
    for (int c = 0; c < 2 * Rows; ++c) asm volatile("" : "+v"(acc[c]));
    for (int a = 0; a < d.kernel_h; ++a) {
        // Each row's words, or no lanes for a row outside the input (its loads read row 0 and keep nothing).
        const uint32_t* row[Rows];
        __mmask16 inside[Rows];
#pragma GCC unroll 8
        for (int r = 0; r < Rows; ++r) {
            const int y_in = (y + r) * d.stride_h + a - d.pad_top;
            const bool valid = y_in >= 0 && y_in < d.in_h;
            row[r] = d.in + static_cast<long>(valid ? y_in : 0) * in_w + origin;
            inside[r] = valid ? __mmask16(0xffff) : __mmask16(0);
        }
        const float* even_weights = d.weights[0] + a * kernel_w;
        const float* odd_weights = d.weights[1] + a * kernel_w;
#pragma GCC unroll 8
        for (int b = 0; b < kernel_w; ++b) {
            const int column = origin + b;
            const __m512 even_weight = _mm512_set1_ps(even_weights[b]), odd_weight = _mm512_set1_ps(odd_weights[b]);
            const __mmask16 first = lanes(-column, in_w - column), second = lanes(-column - 16, in_w - column - 16);
#pragma GCC unroll 8
            for (int r = 0; r < Rows; ++r) {
                __m512i words = _mm512_maskz_loadu_epi32(first & inside[r], row[r] + b);
                if constexpr (Stride == 2)
                    words = _mm512_permutex2var_epi32(words, evens, _mm512_maskz_loadu_epi32(second & inside[r], row[r] + b + 16));
                acc[2 * r] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(words, 16)), even_weight, acc[2 * r]);
                acc[2 * r + 1] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(words, high_half)), odd_weight, acc[2 * r + 1]);
            }
        }
    }
    pair_results<Rows>(d, csr, acc, y, x0);
}

// The rows from y on, fewer than Rows, in one block.
template <int Rows, int Stride>
void pairs_tail(const Bf16DepthwisePairs& d, unsigned csr, int y, int x0, int left) {
    if constexpr (Rows > 0) {
        if (left == Rows) pairs_block<Rows, Stride>(d, csr, y, x0);
        else pairs_tail<Rows - 1, Stride>(d, csr, y, x0, left);
    }
}

template <int Stride>
void pairs_plane(const Bf16DepthwisePairs& d, unsigned csr) {
    constexpr int kRows = 4;  // 8 fma chains a block
    for (int x0 = 0; x0 < d.out_w; x0 += 16) {
        int y = 0;
        for (; y + kRows <= d.out_h; y += kRows) pairs_block<kRows, Stride>(d, csr, y, x0);
        pairs_tail<kRows - 1, Stride>(d, csr, y, x0, d.out_h - y);
    }
}

// pairs_block for a kernel of KH x KW taps at strides SH x SW, all known when compiled: each input row the
// block's output rows read is loaded and widened once per tap column and added into every output row that
// reads it (row i of the window of output row r is tap row i - r * SH), which keeps each output's taps in
// row-major order. `first` and `second` are the masks of each tap column's two loads (the input's columns).
template <int Rows, int KH, int KW, int SH, int SW>
void pairs_block_fixed(const Bf16DepthwisePairs& d, unsigned csr, int y, int x0, const __mmask16* first,
                       const __mmask16* second) {
    __m512 acc[2 * Rows];
#pragma GCC unroll 16
    for (int c = 0; c < 2 * Rows; ++c) acc[c] = _mm512_setzero_ps();
    const __m512i high_half = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
    const __m512i evens = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const int in_w = d.in_w, origin = x0 * SW - d.pad_left, top = y * SH - d.pad_top;
    const float* even_weights = d.weights[0];
    const float* odd_weights = d.weights[1];
    _mm_setcsr(csr | 0x8000u);
#pragma GCC unroll 16
    for (int c = 0; c < 2 * Rows; ++c) asm volatile("" : "+v"(acc[c]));
#pragma GCC unroll 32
    for (int i = 0; i < (Rows - 1) * SH + KH; ++i) {
        const int y_in = top + i;
        const bool valid = y_in >= 0 && y_in < d.in_h;
        const uint32_t* row = d.in + static_cast<long>(valid ? y_in : 0) * in_w + origin;
        const __mmask16 inside = valid ? __mmask16(0xffff) : __mmask16(0);
#pragma GCC unroll 8
        for (int b = 0; b < KW; ++b) {
            __m512i words = _mm512_maskz_loadu_epi32(first[b] & inside, row + b);
            if constexpr (SW == 2)
                words = _mm512_permutex2var_epi32(words, evens, _mm512_maskz_loadu_epi32(second[b] & inside, row + b + 16));
            const __m512 even = _mm512_castsi512_ps(_mm512_slli_epi32(words, 16));
            const __m512 odd = _mm512_castsi512_ps(_mm512_and_si512(words, high_half));
#pragma GCC unroll 8
            for (int r = 0; r < Rows; ++r) {
                const int a = i - r * SH;
                if (a < 0 || a >= KH) continue;
                acc[2 * r] = _mm512_fmadd_ps(even, _mm512_set1_ps(even_weights[a * KW + b]), acc[2 * r]);
                acc[2 * r + 1] = _mm512_fmadd_ps(odd, _mm512_set1_ps(odd_weights[a * KW + b]), acc[2 * r + 1]);
            }
        }
    }
    pair_results<Rows>(d, csr, acc, y, x0);
}

template <int Rows, int KH, int KW, int SH, int SW>
void fixed_tail(const Bf16DepthwisePairs& d, unsigned csr, int y, int x0, const __mmask16* first, const __mmask16* second, int left) {
    if constexpr (Rows > 0) {
        if (left == Rows) pairs_block_fixed<Rows, KH, KW, SH, SW>(d, csr, y, x0, first, second);
        else fixed_tail<Rows - 1, KH, KW, SH, SW>(d, csr, y, x0, first, second, left);
    }
}

template <int KH, int KW, int SH, int SW>
void fixed_plane(const Bf16DepthwisePairs& d, unsigned csr) {
    constexpr int kRows = 4;  // 8 fma chains a block
    for (int x0 = 0; x0 < d.out_w; x0 += 16) {
        __mmask16 first[KW], second[KW];
        for (int b = 0; b < KW; ++b) {
            const int column = x0 * SW - d.pad_left + b;
            first[b] = lanes(-column, d.in_w - column), second[b] = lanes(-column - 16, d.in_w - column - 16);
        }
        int y = 0;
        for (; y + kRows <= d.out_h; y += kRows) pairs_block_fixed<kRows, KH, KW, SH, SW>(d, csr, y, x0, first, second);
        fixed_tail<kRows - 1, KH, KW, SH, SW>(d, csr, y, x0, first, second, d.out_h - y);
    }
}

void depthwise_pairs_avx512(const Bf16DepthwisePairs& d) {
    const unsigned saved = _mm_getcsr(), csr = saved & ~0x8040u;  // the epilogue's plain float32
    const int shape = d.kernel_h * 1000 + d.kernel_w * 100 + d.stride_h * 10 + d.stride_w;
    switch (shape) {  // the common square kernels and strides unrolled; any other through pairs_block
        case 3311: fixed_plane<3, 3, 1, 1>(d, csr); break;
        case 3322: fixed_plane<3, 3, 2, 2>(d, csr); break;
        case 5511: fixed_plane<5, 5, 1, 1>(d, csr); break;
        case 5522: fixed_plane<5, 5, 2, 2>(d, csr); break;
        default:
            if (d.stride_w == 1) pairs_plane<1>(d, csr);
            else pairs_plane<2>(d, csr);
    }
    _mm_setcsr(saved);
}

void widen_avx512(const uint32_t* words, int half, float* out, size_t count) {
    const __m512i high = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
    for (size_t i = 0; i < count; i += 16) {
        const size_t left = count - i;
        const __mmask16 mask = left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1);
        const __m512i bits = _mm512_maskz_loadu_epi32(mask, words + i);
        const __m512i value = half ? _mm512_and_si512(bits, high) : _mm512_slli_epi32(bits, 16);
        _mm512_mask_storeu_ps(out + i, mask, _mm512_castsi512_ps(value));
    }
}

void split_avx512(const float* in, float* even, float* odd, int count) {
    const __m512i evens = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i odds = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    for (int i = 0; i < count; i += 16) {
        const __m512 a = _mm512_loadu_ps(in + 2 * i), b = _mm512_loadu_ps(in + 2 * i + 16);
        _mm512_storeu_ps(even + i, _mm512_permutex2var_ps(a, evens, b));
        _mm512_storeu_ps(odd + i, _mm512_permutex2var_ps(a, odds, b));
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

}  // namespace

Bf16RoundKernel bf16_round_avx512() {
    const CpuFeatures& f = cpu_features();
    return f.avx512f && f.avx512bw && f.avx512_bf16 ? round_avx512 : nullptr;
}

Bf16DepthwiseKernel bf16_depthwise_avx512() {
    const CpuFeatures& f = cpu_features();
    return f.avx512f && f.avx512bw && f.avx512_bf16 ? depthwise_avx512 : nullptr;
}

Bf16DepthwisePairsKernel bf16_depthwise_pairs_avx512() {
    const CpuFeatures& f = cpu_features();
    return f.avx512f && f.avx512bw && f.avx512_bf16 ? depthwise_pairs_avx512 : nullptr;
}

Bf16WidenKernel bf16_widen_avx512() {
    const CpuFeatures& f = cpu_features();
    return f.avx512f && f.avx512bw ? widen_avx512 : nullptr;
}

Bf16SplitKernel bf16_split_avx512() { return cpu_features().avx512f ? split_avx512 : nullptr; }

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
Bf16WidenKernel bf16_widen_avx512() { return nullptr; }
Bf16DepthwisePairsKernel bf16_depthwise_pairs_avx512() { return nullptr; }
Bf16SplitKernel bf16_split_avx512() { return nullptr; }
}  // namespace edge

#endif
