// Portable scalar kernels: the definition every SIMD backend must match bit for bit, and the fallback on
// CPUs without AVX2 or NEON.
#include "winograd.h"

namespace edge {
namespace {

struct ScalarKernels {
    static constexpr int kTile = kTilePixels;

    static void multiply(const ConvOp& op, const int16_t* wide, const size_t* bases, int count, const size_t* tap_offsets,
                         const int16_t* weights, int32_t* acc) {
        const int pairs = op.group_in_padded / 2;
        for (int m = 0; m < count; ++m) {
            int32_t* out = acc + m * op.block;
            for (int j = 0; j < op.block; ++j) out[j] = 0;
            const int16_t* w = weights;
            for (int t = 0; t < op.taps; ++t) {
                const int16_t* x = wide + bases[m] + tap_offsets[t];
                for (int p = 0; p < pairs; ++p, w += op.block * 2) {
                    const int32_t a0 = x[2 * p], a1 = x[2 * p + 1];
                    for (int j = 0; j < op.block; ++j) out[j] += a0 * w[2 * j] + a1 * w[2 * j + 1];
                }
            }
        }
    }

    static void epilogue(const ConvOp& op, const int32_t* acc, int count, int first, int channel, int width,
                         const uint8_t* skip, uint8_t* output) {
        scalar_epilogue(op, acc, count, first, channel, width, skip, output);
    }

    static void winograd_store(const ConvOp& op, const int32_t* m, int first, int count, int channel, int width,
                               const uint8_t* skip, uint8_t* output) {
        winograd_store_scalar(op, m, first, count, channel, width, skip, output);
    }
};

void scalar_winograd(const ConvOp& op, const int16_t* wide, const uint8_t* skip, uint8_t* output, int tile_begin,
                     int tile_end, void* scratch) {
    winograd_driver<ScalarKernels>(op, wide, skip, output, tile_begin, tile_end, scratch);
}

void scalar_widen(const ConvOp& op, const uint8_t* input, int16_t* wide, int row_begin, int row_end) {
    widen_rows(op, input, wide, row_begin, row_end, [](const uint8_t* src, int16_t* dst, int n, int16_t zero) {
        for (int i = 0; i < n; ++i) dst[i] = static_cast<int16_t>(src[i] - zero);
    });
}

void scalar_conv(const ConvOp& op, const int16_t* wide, const uint8_t* skip, uint8_t* output, Range range) {
    conv_driver<ScalarKernels>(op, wide, op.weights, skip, output, range);
}

void scalar_depthwise(const DepthwiseOp& op, const uint8_t* input, uint8_t* output, int pixel_begin, int pixel_end) {
    int32_t acc[1024];
    for (int pixel = pixel_begin; pixel < pixel_end; ++pixel) {
        for (int c0 = 0; c0 < op.channels; c0 += 1024) {
            const int width = std::min(1024, op.channels - c0);
            for (int c = 0; c < width; ++c) acc[c] = 0;
            for_each_depthwise_tap(op, pixel, [&](size_t offset, int tap) {
                const uint8_t* src = input + offset + c0;
                const int32_t* w = op.weights + static_cast<size_t>(tap) * op.channels + c0;
                for (int c = 0; c < width; ++c) acc[c] += (src[c] - op.input_zero) * w[c];
            });
            uint8_t* out = output + static_cast<size_t>(pixel) * op.channels + c0;
            for (int c = 0; c < width; ++c) {
                const float scaled = static_cast<float>(static_cast<int64_t>(acc[c]) + op.bias[c0 + c]) * op.multiplier[c0 + c];
                out[c] = static_cast<uint8_t>(round_onto_grid(scaled, op.output_zero, op.low, op.high));
            }
        }
    }
}

}  // namespace

const Backend& scalar_backend() {
    static const Backend backend{"scalar", scalar_widen, scalar_conv, scalar_depthwise, nullptr, scalar_winograd};
    return backend;
}

}  // namespace edge
