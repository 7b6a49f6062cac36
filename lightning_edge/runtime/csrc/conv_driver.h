// The convolution loop every backend shares: tiles of output pixels, im2col rows packed once per tile and
// group, then one GEMM micro-kernel call and one epilogue per block of output channels. A backend supplies
// pack_row, multiply and epilogue; the loop, the scratch layout and the padding rules live here once.
#pragma once

#include <cstring>

#include "kernels.h"

namespace edge {

inline size_t conv_scratch_bytes(const ConvOp& op) {
    return sizeof(int16_t) * kTilePixels * static_cast<size_t>(op.depth_padded) + sizeof(int32_t) * kTilePixels * 16 + 64;
}

// The centered input values (code - zero point) one output pixel's window reads for group g, in
// (kernel row, kernel column, channel) order; taps in the padding are 0, the real zero.
template <class CopyCentered>
inline void pack_window_row(const ConvOp& op, const uint8_t* input, int pixel, int group, int16_t* row, CopyCentered copy) {
    const int per_image = op.out_h * op.out_w;
    const int n = pixel / per_image, rest = pixel % per_image;
    const int oh = rest / op.out_w, ow = rest % op.out_w;
    const int16_t zero = static_cast<int16_t>(op.input_zero);
    int16_t* out = row;
    for (int ky = 0; ky < op.kernel_h; ++ky) {
        const int ih = oh * op.stride_h - op.pad_top + ky;
        for (int kx = 0; kx < op.kernel_w; ++kx, out += op.group_in) {
            const int iw = ow * op.stride_w - op.pad_left + kx;
            if (ih < 0 || ih >= op.in_h || iw < 0 || iw >= op.in_w) {
                std::memset(out, 0, sizeof(int16_t) * op.group_in);
                continue;
            }
            const uint8_t* src = input + ((static_cast<size_t>(n) * op.in_h + ih) * op.in_w + iw) * op.in_c + group * op.group_in;
            copy(src, out, op.group_in, zero);
        }
    }
    for (int k = op.depth; k < op.depth_padded; ++k) row[k] = 0;
}

template <class Kernels>
void conv_driver(const ConvOp& op, const uint8_t* input, const uint8_t* skip, uint8_t* output, Range range, void* scratch) {
    int16_t* rows = static_cast<int16_t*>(scratch);
    uintptr_t acc_address = reinterpret_cast<uintptr_t>(rows + kTilePixels * static_cast<size_t>(op.depth_padded));
    int32_t* acc = reinterpret_cast<int32_t*>((acc_address + 31) & ~static_cast<uintptr_t>(31));
    const size_t block_stride = static_cast<size_t>(op.depth_padded / 2) * op.block * 2;
    for (int first = range.pixel_begin; first < range.pixel_end; first += kTilePixels) {
        const int count = std::min(kTilePixels, range.pixel_end - first);
        int packed_group = -1;
        for (int column = range.column_begin; column < range.column_end; ++column) {
            const int group = column / op.blocks, block = column % op.blocks;
            if (group != packed_group) {
                for (int m = 0; m < count; ++m)
                    Kernels::pack_row(op, input, first + m, group, rows + static_cast<size_t>(m) * op.depth_padded);
                packed_group = group;
            }
            const int16_t* weights = op.weights + (static_cast<size_t>(group) * op.blocks + block) * block_stride;
            Kernels::multiply(op, rows, count, weights, acc);
            const int channel = group * op.group_out + block * op.block;
            const int width = std::min(op.block, op.group_out - block * op.block);
            Kernels::epilogue(op, acc, count, first, channel, width, skip, output);
        }
    }
}

// Scalar epilogue of a tile: acc is [count][op.block], written to channels [channel, channel + width).
inline void scalar_epilogue(const ConvOp& op, const int32_t* acc, int count, int first, int channel, int width,
                            const uint8_t* skip, uint8_t* output, int from = 0) {
    for (int m = 0; m < count; ++m) {
        const size_t base = static_cast<size_t>(first + m) * op.out_c + channel;
        for (int j = from; j < width; ++j)
            output[base + j] = conv_epilogue(op, acc[m * op.block + j], channel + j, skip, base + j);
    }
}

// Depthwise window of one output pixel, shared loop shape: calls tap(input_offset, tap_index) for each tap
// inside the image (padding taps add 0).
template <class Tap>
inline void for_each_depthwise_tap(const DepthwiseOp& op, int pixel, Tap tap) {
    const int per_image = op.out_h * op.out_w;
    const int n = pixel / per_image, rest = pixel % per_image;
    const int oh = rest / op.out_w, ow = rest % op.out_w;
    for (int ky = 0; ky < op.kernel_h; ++ky) {
        const int ih = oh * op.stride_h - op.pad_top + ky;
        if (ih < 0 || ih >= op.in_h) continue;
        for (int kx = 0; kx < op.kernel_w; ++kx) {
            const int iw = ow * op.stride_w - op.pad_left + kx;
            if (iw < 0 || iw >= op.in_w) continue;
            tap(((static_cast<size_t>(n) * op.in_h + ih) * op.in_w + iw) * op.channels, ky * op.kernel_w + kx);
        }
    }
}

}  // namespace edge
