// NEON kernels for aarch64 (every ARMv8-A core has Advanced SIMD), chosen at run time there.
//
// Exact like the AVX2 path: codes centered (q - z, in [-255, 255]) and widened to int16, weights int16,
// products accumulated in int32 with vmlal (|product| <= 255 * 128, no intermediate narrowing). Weights
// are packed k-major ([tap][channel][channel in block]), so one multiply-accumulate by a scalar covers 4
// output channels. The epilogue and the Winograd and depthwise kernels are the scalar ones.
#include "winograd.h"

#if defined(__aarch64__)
#include <arm_neon.h>

namespace edge {
namespace {

template <int Count, int Block>
inline void multiply_tile(const ConvOp& op, const int16_t* wide, const size_t* bases, const size_t* tap_offsets,
                          const int16_t* weights, int32_t* acc) {
    constexpr int Quarters = Block / 4;
    int32x4_t sum[Count][Quarters];
    for (int m = 0; m < Count; ++m)
        for (int v = 0; v < Quarters; ++v) sum[m][v] = vdupq_n_s32(0);
    const int depth = op.group_in_padded;
    const int16_t* w = weights;
    for (int t = 0; t < op.taps; ++t) {
        const int16_t* x[Count];
        for (int m = 0; m < Count; ++m) x[m] = wide + bases[m] + tap_offsets[t];
        for (int k = 0; k < depth; ++k, w += Block) {
            int16x8_t wv[Block / 8];
            for (int v = 0; v < Block / 8; ++v) wv[v] = vld1q_s16(w + v * 8);
            for (int m = 0; m < Count; ++m) {
                const int16_t a = x[m][k];
                for (int v = 0; v < Block / 8; ++v) {
                    sum[m][2 * v] = vmlal_n_s16(sum[m][2 * v], vget_low_s16(wv[v]), a);
                    sum[m][2 * v + 1] = vmlal_high_n_s16(sum[m][2 * v + 1], wv[v], a);
                }
            }
        }
    }
    for (int m = 0; m < Count; ++m)
        for (int v = 0; v < Quarters; ++v) vst1q_s32(acc + m * Block + v * 4, sum[m][v]);
}

template <int Block>
inline void multiply_block(const ConvOp& op, const int16_t* wide, const size_t* bases, int count, const size_t* taps,
                           const int16_t* weights, int32_t* acc) {
    with_count<kTilePixels>(count, [&](auto rows) { multiply_tile<rows.value, Block>(op, wide, bases, taps, weights, acc); });
}

struct NeonKernels {
    static constexpr int kTile = kTilePixels;

    static void multiply(const ConvOp& op, const int16_t* wide, const size_t* bases, int count, const size_t* taps,
                         const int16_t* weights, int32_t* acc) {
        if (op.block == 16) multiply_block<16>(op, wide, bases, count, taps, weights, acc);
        else multiply_block<8>(op, wide, bases, count, taps, weights, acc);
    }

    static void epilogue(const ConvOp& op, const int32_t* acc, int count, int first, int channel, int width,
                         const uint8_t* skip, uint8_t* output) {
        scalar_epilogue(op, acc, count, first, channel, width, skip, output);
    }
};

void neon_widen(const ConvOp& op, const uint8_t* input, int16_t* wide, int row_begin, int row_end) {
    widen_rows(op, input, wide, row_begin, row_end, [](const uint8_t* src, int16_t* dst, int n, int16_t zero) {
        const int16x8_t centre = vdupq_n_s16(zero);
        int i = 0;
        for (; i + 8 <= n; i += 8)
            vst1q_s16(dst + i, vsubq_s16(vreinterpretq_s16_u16(vmovl_u8(vld1_u8(src + i))), centre));
        for (; i < n; ++i) dst[i] = static_cast<int16_t>(src[i] - zero);
    });
}

void neon_conv(const ConvOp& op, const int16_t* wide, const uint8_t* skip, uint8_t* output, Range range) {
    conv_driver<NeonKernels>(op, wide, op.weights, skip, output, range);
}

}  // namespace

const Backend* neon_backend() {
    const Backend& scalar = scalar_backend();
    static const Backend backend{"neon", neon_widen, neon_conv, scalar.depthwise, nullptr, scalar.winograd};
    return &backend;
}

}  // namespace edge

#else
namespace edge {
const Backend* neon_backend() { return nullptr; }
}  // namespace edge
#endif
