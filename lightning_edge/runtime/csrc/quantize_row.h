// The quantize op's row: one image row of every channel (planes `plane` floats apart) onto the grid, written
// NHWC (INT8_SPEC: a float32 division, then round_onto_grid). The form for every CPU computes kPixels pixels
// of each channel in a contiguous run (a loop the compiler vectorizes), then interleaves them; the AVX-512
// VBMI form (kernels_quantize.cpp) does grey and RGB rows 16 pixels at a time with the same float32 steps.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "attributes.h"
#include "kernels.h"

namespace edge {

inline void quantize_row(const float* x, size_t plane, int channels, int width, Grid grid, uint8_t* dst) {
    constexpr int kPixels = 64;
    alignas(64) uint8_t codes[kPixels];
    for (int x0 = 0; x0 < width; x0 += kPixels) {
        const int count = std::min(kPixels, width - x0);
        for (int c = 0; c < channels; ++c) {
            const float* src = x + static_cast<size_t>(c) * plane + x0;
            for (int i = 0; i < count; ++i)
                codes[i] = static_cast<uint8_t>(round_onto_grid(src[i] / grid.scale, grid.zero, grid.low, grid.high));
            for (int i = 0; i < count; ++i) dst[static_cast<size_t>(x0 + i) * channels + c] = codes[i];
        }
    }
}

using QuantizeRow = void (*)(const float* x, size_t plane, int channels, int width, Grid grid, uint8_t* dst);

// The AVX-512 VBMI form; nullptr where the CPU or build lacks it.
QuantizeRow quantize_row_vbmi();

}  // namespace edge
