// AVX-512 VNNI kernels (Zen 4, Ice Lake and later), chosen at run time when the CPU has AVX-512 F/BW/VL
// and VNNI.
//
// vpdpbusd multiplies uint8 codes by int8 weights and adds each group of four products straight into an
// int32 lane: no int16 intermediate, so nothing saturates and the result is exact for every int8 file
// (unlike AVX2's vpmaddubsw, INT8_SPEC.md). The input stays uint8 (bordered with its zero point), the
// zero-point term -z_x * sum(w) is in the bias, and 64 multiply-adds run per instruction.
#include "winograd.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx2,avx512f,avx512bw,avx512vl,avx512vnni")

#include "avx2_common.h"

namespace edge {
namespace {

template <int Count, int Block>
inline void multiply_quads(const ConvOp& op, const uint8_t* wide, const size_t* bases, const size_t* tap_offsets,
                           const int8_t* weights, int32_t* acc) {
    const int quads = op.group_in_padded / 4;
    const int8_t* w = weights;
    if constexpr (Block == 32) {
        __m512i sum[Count][2];
#pragma GCC unroll 16
        for (int m = 0; m < Count; ++m) sum[m][0] = sum[m][1] = _mm512_setzero_si512();
        for (int t = 0; t < op.taps; ++t) {
            const int32_t* x[Count];
#pragma GCC unroll 16
            for (int m = 0; m < Count; ++m) x[m] = reinterpret_cast<const int32_t*>(wide + bases[m] + tap_offsets[t]);
            for (int q = 0; q < quads; ++q, w += 128) {
                const __m512i w0 = _mm512_loadu_si512(w), w1 = _mm512_loadu_si512(w + 64);
#pragma GCC unroll 16
                for (int m = 0; m < Count; ++m) {
                    const __m512i a = _mm512_set1_epi32(x[m][q]);
                    sum[m][0] = _mm512_dpbusd_epi32(sum[m][0], a, w0);
                    sum[m][1] = _mm512_dpbusd_epi32(sum[m][1], a, w1);
                }
            }
        }
#pragma GCC unroll 16
        for (int m = 0; m < Count; ++m) {
            _mm512_store_si512(acc + m * 32, sum[m][0]);
            _mm512_store_si512(acc + m * 32 + 16, sum[m][1]);
        }
    } else if constexpr (Block == 16) {
        __m512i sum[Count];
#pragma GCC unroll 16
        for (int m = 0; m < Count; ++m) sum[m] = _mm512_setzero_si512();
        for (int t = 0; t < op.taps; ++t) {
            const int32_t* x[Count];
#pragma GCC unroll 16
            for (int m = 0; m < Count; ++m) x[m] = reinterpret_cast<const int32_t*>(wide + bases[m] + tap_offsets[t]);
            for (int q = 0; q < quads; ++q, w += 64) {
                const __m512i wv = _mm512_loadu_si512(w);
#pragma GCC unroll 16
                for (int m = 0; m < Count; ++m) sum[m] = _mm512_dpbusd_epi32(sum[m], _mm512_set1_epi32(x[m][q]), wv);
            }
        }
#pragma GCC unroll 16
        for (int m = 0; m < Count; ++m) _mm512_store_si512(acc + m * 16, sum[m]);
    } else {
        __m256i sum[Count];
#pragma GCC unroll 16
        for (int m = 0; m < Count; ++m) sum[m] = _mm256_setzero_si256();
        for (int t = 0; t < op.taps; ++t) {
            const int32_t* x[Count];
#pragma GCC unroll 16
            for (int m = 0; m < Count; ++m) x[m] = reinterpret_cast<const int32_t*>(wide + bases[m] + tap_offsets[t]);
            for (int q = 0; q < quads; ++q, w += 32) {
                const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));
#pragma GCC unroll 16
                for (int m = 0; m < Count; ++m) sum[m] = _mm256_dpbusd_epi32(sum[m], _mm256_set1_epi32(x[m][q]), wv);
            }
        }
#pragma GCC unroll 16
        for (int m = 0; m < Count; ++m) _mm256_store_si256(reinterpret_cast<__m256i*>(acc + m * 8), sum[m]);
    }
}

// A sparse column's steps (kernels.h): each step is one quad of input channels at offsets[s] from every
// pixel's window, its Block weights [Block][4] next in `weights`. The pixels' addresses are computed once for
// the tile, so a step costs what a dense quad costs: one broadcast and one vpdpbusd per pixel and register.
template <int Count, int Block>
inline void multiply_quad_steps(const uint8_t* wide, const size_t* bases, const size_t* offsets, int steps,
                                const int8_t* weights, int32_t* acc) {
    constexpr int Registers = Block / 16;
    const uint8_t* x[Count];
#pragma GCC unroll 16
    for (int m = 0; m < Count; ++m) x[m] = wide + bases[m];
    __m512i sum[Count][Registers];
#pragma GCC unroll 16
    for (int m = 0; m < Count; ++m)
#pragma GCC unroll 2
        for (int r = 0; r < Registers; ++r) sum[m][r] = _mm512_setzero_si512();
    const int8_t* w = weights;
    for (int s = 0; s < steps; ++s, w += Block * 4) {
        const size_t offset = offsets[s];
        __m512i wv[Registers];
#pragma GCC unroll 2
        for (int r = 0; r < Registers; ++r) wv[r] = _mm512_loadu_si512(w + 64 * r);
#pragma GCC unroll 16
        for (int m = 0; m < Count; ++m) {
            int32_t quad;
            std::memcpy(&quad, x[m] + offset, sizeof(quad));
            const __m512i a = _mm512_set1_epi32(quad);
#pragma GCC unroll 2
            for (int r = 0; r < Registers; ++r) sum[m][r] = _mm512_dpbusd_epi32(sum[m][r], a, wv[r]);
        }
    }
#pragma GCC unroll 16
    for (int m = 0; m < Count; ++m)
#pragma GCC unroll 2
        for (int r = 0; r < Registers; ++r) _mm512_store_si512(acc + m * Block + 16 * r, sum[m][r]);
}

template <int Block>
inline void multiply_quads_count(const ConvOp& op, const uint8_t* wide, const size_t* bases, int count, const size_t* taps,
                                 const int8_t* weights, int32_t* acc) {
    with_count<kQuadTilePixels>(count, [&](auto rows) { multiply_quads<rows.value, Block>(op, wide, bases, taps, weights, acc); });
}

struct Avx512Kernels {
    static constexpr int kTile = kQuadTilePixels;

    static void multiply(const ConvOp& op, const uint8_t* wide, const size_t* bases, int count, const size_t* taps,
                         const int8_t* weights, int32_t* acc) {
        if (op.block == 32) multiply_quads_count<32>(op, wide, bases, count, taps, weights, acc);
        else if (op.block == 16) multiply_quads_count<16>(op, wide, bases, count, taps, weights, acc);
        else multiply_quads_count<8>(op, wide, bases, count, taps, weights, acc);
    }

    static void multiply_steps(const ConvOp& op, const uint8_t* wide, const size_t* bases, int count, const size_t* offsets,
                               int steps, const int8_t* weights, int32_t* acc) {
        with_count<kQuadTilePixels>(count, [&](auto rows) {
            if (op.block == 32) multiply_quad_steps<rows.value, 32>(wide, bases, offsets, steps, weights, acc);
            else if (op.block == 16) multiply_quad_steps<rows.value, 16>(wide, bases, offsets, steps, weights, acc);
            else multiply_quads<rows.value, 8>(steps_as_taps(op, steps), wide, bases, offsets, weights, acc);
        });
    }

    // 16 channels per step, a ragged last step masked; each step's bias, multipliers and bounds are loaded once
    // for the whole tile (channels outer, pixels inner).
    static void epilogue(const ConvOp& op, const int32_t* acc, int count, int first, int channel, int width,
                         const uint8_t* skip, uint8_t* output) {
        const __m512 low = _mm512_set1_ps(static_cast<float>(op.low - op.output_zero));
        const __m512 high = _mm512_set1_ps(static_cast<float>(op.high - op.output_zero));
        const __m512i zero = _mm512_set1_epi32(op.output_zero);
        const bool residual = op.residual;
        const size_t out_c = op.out_c;
        const int block = op.block;
        uint8_t* out = output + static_cast<size_t>(first) * out_c + channel;
        const uint8_t* skip_at = residual ? skip + static_cast<size_t>(first) * out_c + channel : nullptr;
        for (int j = 0; j < width; j += 16) {
            const __mmask16 mask = width - j >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (width - j)) - 1);
            const __m512i bias = _mm512_maskz_loadu_epi32(mask, op.bias + channel + j);
            const __m512 multiplier = _mm512_maskz_loadu_ps(mask, op.multiplier + channel + j);
            for (int m = 0; m < count; ++m) {
                const __m512i total = _mm512_add_epi32(_mm512_maskz_loadu_epi32(mask, acc + m * block + j), bias);
                __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(total), multiplier);
                v = _mm512_min_ps(_mm512_max_ps(v, low), high);  // NaN -> low, as the scalar path
                __m512i q = _mm512_add_epi32(_mm512_cvtps_epi32(v), zero);
                if (residual) q = add_skip(op, q, zero, _mm_maskz_loadu_epi8(mask, skip_at + m * out_c + j));
                _mm_mask_storeu_epi8(out + m * out_c + j, mask, _mm512_cvtusepi32_epi8(q));
            }
        }
    }

    // The folded residual add of 16 channels (conv codes q, the skip's codes): kernels.h's conv_epilogue.
    static __m512i add_skip(const ConvOp& op, __m512i q, __m512i zero, __m128i skip_codes) {
        const __m512 conv_real = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(q, zero)), _mm512_set1_ps(op.conv_scale));
        const __m512i centered = _mm512_sub_epi32(_mm512_cvtepu8_epi32(skip_codes), _mm512_set1_epi32(op.skip_zero));
        const __m512 skip_real = _mm512_mul_ps(_mm512_cvtepi32_ps(centered), _mm512_set1_ps(op.skip_scale));
        __m512 sum = _mm512_div_ps(_mm512_add_ps(conv_real, skip_real), _mm512_set1_ps(op.sum_scale));
        sum = _mm512_min_ps(_mm512_max_ps(sum, _mm512_set1_ps(static_cast<float>(op.sum_low - op.sum_zero))),
                            _mm512_set1_ps(static_cast<float>(op.sum_high - op.sum_zero)));
        return _mm512_add_epi32(_mm512_cvtps_epi32(sum), _mm512_set1_epi32(op.sum_zero));
    }
};

void avx512_conv8(const ConvOp& op, const uint8_t* wide, const uint8_t* skip, uint8_t* output, Range range) {
    conv_driver<Avx512Kernels, uint8_t, int8_t>(op, wide, op.weights8, skip, output, range);
}

// Depthwise conv in the quads layout, 64 channels per step: for each quad of taps, four 64-channel loads are
// interleaved byte-wise then word-wise into four registers of (tap 0, 1, 2, 3) byte quads, one vpdpbusd each
// (depthwise_lane_channel gives the lane order, which the packs at the end undo). Taps outside the image
// read the zero-point row and the taps past the last of a quad have weight 0, so every pixel runs one loop.
void avx512_depthwise_quads(const DepthwiseOp& op, const uint8_t* input, uint8_t* output, int pixel_begin, int pixel_end) {
    const int taps = op.kernel_h * op.kernel_w, quads = (taps + 3) / 4, blocks = (op.channels + 63) / 64;
    const uint8_t* rows[kMaxTaps + 3];
    for (int t = taps; t < quads * 4; ++t) rows[t] = op.zero_row;
    const __m512 low = _mm512_set1_ps(static_cast<float>(op.low - op.output_zero));
    const __m512 high = _mm512_set1_ps(static_cast<float>(op.high - op.output_zero));
    const __m512i zero = _mm512_set1_epi32(op.output_zero);
    const int per_image = op.out_h * op.out_w;
    int n = pixel_begin / per_image, oh = pixel_begin % per_image / op.out_w, ow = pixel_begin % op.out_w;
    for (int pixel = pixel_begin; pixel < pixel_end; ++pixel) {
        depthwise_tap_rows(op, input, n, oh, ow, rows);
        uint8_t* out = output + static_cast<size_t>(pixel) * op.channels;
        for (int block = 0; block < blocks; ++block) {
            const int c = block * 64, width = std::min(64, op.channels - c);
            const __mmask64 mask = width == 64 ? ~__mmask64{0} : (__mmask64{1} << width) - 1;
            const int32_t* bias = op.bias + block * 64;
            __m512i acc[4];
            for (int r = 0; r < 4; ++r) acc[r] = _mm512_loadu_si512(bias + 16 * r);
            const int8_t* w = op.weights8 + static_cast<size_t>(block) * quads * 256;
            for (int q = 0; q < quads; ++q, w += 256) {
                const __m512i a0 = _mm512_maskz_loadu_epi8(mask, rows[4 * q] + c), a1 = _mm512_maskz_loadu_epi8(mask, rows[4 * q + 1] + c);
                const __m512i a2 = _mm512_maskz_loadu_epi8(mask, rows[4 * q + 2] + c), a3 = _mm512_maskz_loadu_epi8(mask, rows[4 * q + 3] + c);
                const __m512i low01 = _mm512_unpacklo_epi8(a0, a1), high01 = _mm512_unpackhi_epi8(a0, a1);
                const __m512i low23 = _mm512_unpacklo_epi8(a2, a3), high23 = _mm512_unpackhi_epi8(a2, a3);
                acc[0] = _mm512_dpbusd_epi32(acc[0], _mm512_unpacklo_epi16(low01, low23), _mm512_loadu_si512(w));
                acc[1] = _mm512_dpbusd_epi32(acc[1], _mm512_unpackhi_epi16(low01, low23), _mm512_loadu_si512(w + 64));
                acc[2] = _mm512_dpbusd_epi32(acc[2], _mm512_unpacklo_epi16(high01, high23), _mm512_loadu_si512(w + 128));
                acc[3] = _mm512_dpbusd_epi32(acc[3], _mm512_unpackhi_epi16(high01, high23), _mm512_loadu_si512(w + 192));
            }
            __m512i q[4];
            for (int r = 0; r < 4; ++r) {
                __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(acc[r]), _mm512_loadu_ps(op.multiplier + block * 64 + 16 * r));
                v = _mm512_min_ps(_mm512_max_ps(v, low), high);  // NaN -> low, as the scalar path
                q[r] = _mm512_add_epi32(_mm512_cvtps_epi32(v), zero);
            }
            const __m512i codes = _mm512_packus_epi16(_mm512_packs_epi32(q[0], q[1]), _mm512_packs_epi32(q[2], q[3]));
            _mm512_mask_storeu_epi8(out + c, mask, codes);
        }
        if (++ow == op.out_w) {
            ow = 0;
            if (++oh == op.out_h) oh = 0, ++n;
        }
    }
}

// The columns layout (kernel_h <= 8): each kernel column's taps (rows ky = 0 .. kernel_h - 1, zero weights
// after) form one quad (kernel_h <= 4) or two, so the interleaved registers of one input column serve every
// output pixel whose window covers it: a row of output pixels is computed kPixels at a time, each input
// column loaded and interleaved once for all of them (the row-major quads kernel interleaves each tap again
// for every pixel). The interleave, the lane order and the epilogue are the quads kernel's.
class DepthwiseColumns {
  public:
    static constexpr int kPixels = 4;

    DepthwiseColumns(const DepthwiseOp& op)
        : op_(op), low_(_mm512_set1_ps(static_cast<float>(op.low - op.output_zero))),
          high_(_mm512_set1_ps(static_cast<float>(op.high - op.output_zero))), zero_(_mm512_set1_epi32(op.output_zero)) {}

    // Output pixels [ow_begin, ow_end) of row oh of image n.
    void row(const uint8_t* input, uint8_t* output, int n, int oh, int ow_begin, int ow_end) const {
        const uint8_t* rows[8];
        for (int ky = 0; ky < 8; ++ky) {
            const int ih = oh * op_.stride_h - op_.pad_top + ky;
            rows[ky] = ky < op_.kernel_h && ih >= 0 && ih < op_.in_h
                           ? input + (static_cast<size_t>(n) * op_.in_h + ih) * op_.in_w * op_.channels : nullptr;
        }
        uint8_t* out = output + ((static_cast<size_t>(n) * op_.out_h + oh) * op_.out_w) * op_.channels;
        const int blocks = (op_.channels + 63) / 64;
        for (int block = 0; block < blocks; ++block) {
            int ow = ow_begin;
            for (; ow + kPixels <= ow_end; ow += kPixels) with_kernel_width(block, rows, out, ow, std::integral_constant<int, kPixels>{});
            if (ow < ow_end)  // the row's last 1 to kPixels - 1 pixels in one step too
                with_count<kPixels - 1>(ow_end - ow, [&](auto count) { with_kernel_width(block, rows, out, ow, count); });
        }
    }

  private:
    template <int Pixels>
    void with_kernel_width(int block, const uint8_t* const* rows, uint8_t* out, int ow, std::integral_constant<int, Pixels>) const {
        const int quads = (op_.kernel_h + 3) / 4;
        switch ((quads * 16 + op_.kernel_w) * 4 + op_.stride_w) {  // the common windows unrolled, the rest by the general loop
            case (16 + 3) * 4 + 1: return pixels<Pixels, 3, 1, 1>(block, rows, out, ow);
            case (16 + 3) * 4 + 2: return pixels<Pixels, 3, 2, 1>(block, rows, out, ow);
            case (32 + 5) * 4 + 1: return pixels<Pixels, 5, 1, 2>(block, rows, out, ow);
            case (32 + 5) * 4 + 2: return pixels<Pixels, 5, 2, 2>(block, rows, out, ow);
            default: return pixels<Pixels, 0, 0, 0>(block, rows, out, ow);
        }
    }

    // Interleaves input column ix of the block's channels at kernel rows 4 * quad .. + 3: the 4 registers of
    // (ky 0, 1, 2, 3 of the quad) byte quads.
    void column(int block, const uint8_t* const* rows, int ix, int quad, __m512i* registers) const {
        const int c = block * 64, width = std::min(64, op_.channels - c);
        const __mmask64 mask = width == 64 ? ~__mmask64{0} : (__mmask64{1} << width) - 1;
        const bool inside = ix >= 0 && ix < op_.in_w;
        __m512i a[4];
#pragma GCC unroll 4
        for (int ky = 0; ky < 4; ++ky) {  // rows past the kernel have weight 0: any codes do, zeros are free
            const int row = 4 * quad + ky;
            if (row >= op_.kernel_h) {
                a[ky] = _mm512_setzero_si512();
                continue;
            }
            const uint8_t* source = inside && rows[row] ? rows[row] + static_cast<size_t>(ix) * op_.channels : op_.zero_row;
            a[ky] = _mm512_maskz_loadu_epi8(mask, source + c);
        }
        const __m512i low01 = _mm512_unpacklo_epi8(a[0], a[1]), high01 = _mm512_unpackhi_epi8(a[0], a[1]);
        const __m512i low23 = _mm512_unpacklo_epi8(a[2], a[3]), high23 = _mm512_unpackhi_epi8(a[2], a[3]);
        registers[0] = _mm512_unpacklo_epi16(low01, low23), registers[1] = _mm512_unpackhi_epi16(low01, low23);
        registers[2] = _mm512_unpacklo_epi16(high01, high23), registers[3] = _mm512_unpackhi_epi16(high01, high23);
    }

    // Pixels output pixels from ow on, for a window KW columns wide at column stride S with Q quads a column
    // (0, 0, 0: the op's own).
    template <int Pixels, int KW, int S, int Q>
    void pixels(int block, const uint8_t* const* rows, uint8_t* out, int ow) const {
        const int kernel_w = KW ? KW : op_.kernel_w, stride = S ? S : op_.stride_w, quads = Q ? Q : (op_.kernel_h + 3) / 4;
        const int8_t* weights = op_.weights8 + static_cast<size_t>(block) * kernel_w * quads * 256;
        const int32_t* bias = op_.bias + block * 64;
        __m512i acc[Pixels][4];
#pragma GCC unroll 8
        for (int p = 0; p < Pixels; ++p)
#pragma GCC unroll 4
            for (int r = 0; r < 4; ++r) acc[p][r] = _mm512_loadu_si512(bias + 16 * r);
        const int first = ow * stride - op_.pad_left, columns = (Pixels - 1) * stride + kernel_w;
        // Unrolled for the common windows, so every accumulator stays in a register.
#pragma GCC unroll 16
        for (int j = 0; j < columns; ++j) {
#pragma GCC unroll 2
            for (int q = 0; q < quads; ++q) {
                __m512i registers[4];
                column(block, rows, first + j, q, registers);
#pragma GCC unroll 8
                for (int p = 0; p < Pixels; ++p) {
                    const int kx = j - p * stride;
                    if (kx < 0 || kx >= kernel_w) continue;
                    const int8_t* w = weights + (kx * quads + q) * 256;
#pragma GCC unroll 4
                    for (int r = 0; r < 4; ++r) acc[p][r] = _mm512_dpbusd_epi32(acc[p][r], registers[r], _mm512_loadu_si512(w + 64 * r));
                }
            }
        }
        const int c = block * 64, width = std::min(64, op_.channels - c);
        const __mmask64 mask = width == 64 ? ~__mmask64{0} : (__mmask64{1} << width) - 1;
        const float* multiplier = op_.multiplier + block * 64;
#pragma GCC unroll 8
        for (int p = 0; p < Pixels; ++p) {
            __m512i q[4];
#pragma GCC unroll 4
            for (int r = 0; r < 4; ++r) {
                __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(acc[p][r]), _mm512_loadu_ps(multiplier + 16 * r));
                v = _mm512_min_ps(_mm512_max_ps(v, low_), high_);  // NaN -> low, as the scalar path
                q[r] = _mm512_add_epi32(_mm512_cvtps_epi32(v), zero_);
            }
            const __m512i codes = _mm512_packus_epi16(_mm512_packs_epi32(q[0], q[1]), _mm512_packs_epi32(q[2], q[3]));
            _mm512_mask_storeu_epi8(out + static_cast<size_t>(ow + p) * op_.channels + c, mask, codes);
        }
    }

    const DepthwiseOp& op_;
    const __m512 low_, high_;
    const __m512i zero_;
};

void avx512_depthwise_columns(const DepthwiseOp& op, const uint8_t* input, uint8_t* output, int pixel_begin, int pixel_end) {
    const DepthwiseColumns kernel(op);
    for (int pixel = pixel_begin; pixel < pixel_end;) {  // row by row: the pixels of the range in each
        const int row = pixel / op.out_w, ow = pixel % op.out_w, end = std::min(op.out_w, ow + pixel_end - pixel);
        kernel.row(input, output, row / op.out_h, row % op.out_h, ow, end);
        pixel += end - ow;
    }
}

}  // namespace

double avx512_peak_macs(long iterations) {
    __m512i acc[12];
    for (int i = 0; i < 12; ++i) acc[i] = _mm512_set1_epi32(i);
    __m512i a = _mm512_set1_epi32(0x01020304), b = _mm512_set1_epi32(0x05060708);
    for (long r = 0; r < iterations; ++r) {
#pragma GCC unroll 12
        for (int i = 0; i < 12; ++i) acc[i] = _mm512_dpbusd_epi32(acc[i], a, b);
        __asm__ volatile("" : "+v"(a), "+v"(b));
    }
    int32_t sink[16];
    __m512i total = acc[0];
    for (int i = 1; i < 12; ++i) total = _mm512_add_epi32(total, acc[i]);
    _mm512_storeu_si512(sink, total);
    volatile int32_t keep = sink[0];
    (void)keep;
    return 12.0 * 64.0 * static_cast<double>(iterations);
}

const Backend* avx512_backend() {
    const Backend* avx2 = avx2_backend();
    if (!avx2) return nullptr;
    // int16 kernels (Winograd, odd layouts) are AVX2's; the u8 x s8 GEMM and depthwise conv are VNNI.
    static const Backend backend{"avx512", avx2->widen, avx2->conv, avx2->depthwise, avx512_conv8, avx2->winograd,
                                 avx512_depthwise_quads, avx2->depthwise_pairs, avx512_depthwise_columns};
    return &backend;
}

}  // namespace edge

#pragma GCC pop_options

#else
namespace edge {
const Backend* avx512_backend() { return nullptr; }
double avx512_peak_macs(long) { return 0; }
}  // namespace edge
#endif
