// The convolution loop every backend shares. The input is first widened once per layer (widen_rows: int16,
// centered, zero-bordered); then tiles of kTilePixels output pixels run one GEMM micro-kernel call per
// block of output channels, reading each pixel's window straight from the widened input (a base offset per
// pixel plus one offset per kernel tap), and one epilogue. A backend supplies the row copy, the micro-kernel
// and the epilogue; the loops, the offsets and the padding rules live here once.
#pragma once

#include <cstring>
#include <type_traits>

#include "kernels.h"

namespace edge {

constexpr int kMaxTaps = 128;  // a 9x9 window: a 5x5 kernel dilated by 2

// Calls f(std::integral_constant<int, N>{}) with N = count (1 <= count <= Max), so a micro-kernel can be
// unrolled for every tile height it meets.
template <int Max, class F>
inline void with_count(int count, F f) {
    if constexpr (Max > 1) {
        if (count < Max) return with_count<Max - 1>(count, f);
    }
    f(std::integral_constant<int, Max>{});
}

// Rows [row_begin, row_end) of the widened input (row index = image * wide_h + y). copy(src, dst, count, zero)
// widens `count` codes to centered int16.
template <class Copy>
inline void widen_rows(const ConvOp& op, const uint8_t* input, int16_t* wide, int row_begin, int row_end, Copy copy) {
    const size_t row_elements = static_cast<size_t>(op.wide_w) * op.wide_c;
    const int columns = std::max(0, std::min((op.in_w + op.sample_w - 1) / op.sample_w, op.wide_w - op.pad_left));
    const int16_t zero = static_cast<int16_t>(op.input_zero);
    const bool dense = op.group_in == op.group_in_padded && op.sample_w == 1;
    for (int row = row_begin; row < row_end; ++row) {
        const int n = row / op.wide_h, y = row % op.wide_h * op.sample_h - op.pad_top;
        int16_t* dst = wide + static_cast<size_t>(row) * row_elements;
        if (y < 0 || y >= op.in_h) {
            std::memset(dst, 0, sizeof(int16_t) * row_elements);
            continue;
        }
        const uint8_t* src = input + (static_cast<size_t>(n) * op.in_h + y) * op.in_w * op.in_c;
        const size_t left = static_cast<size_t>(op.pad_left) * op.wide_c;
        std::memset(dst, 0, sizeof(int16_t) * left);
        if (dense) {
            copy(src, dst + left, columns * op.in_c, zero);
        } else if (op.groups == 1 && op.sample_w == 1 && op.group_in_padded <= 4) {  // an RGB stem: 3 codes and a 0
            for (int x = 0; x < columns; ++x) {
                int16_t* out = dst + left + static_cast<size_t>(x) * op.wide_c;
                const uint8_t* in = src + static_cast<size_t>(x) * op.in_c;
                for (int c = 0; c < op.group_in_padded; ++c) out[c] = c < op.in_c ? static_cast<int16_t>(in[c] - zero) : 0;
            }
        } else {  // odd channels per group (each group gets zero channels after its own), or a strided 1x1
            for (int x = 0; x < columns; ++x)
                for (int g = 0; g < op.groups; ++g) {
                    int16_t* out = dst + left + static_cast<size_t>(x) * op.wide_c + g * op.group_in_padded;
                    copy(src + static_cast<size_t>(x) * op.sample_w * op.in_c + g * op.group_in, out, op.group_in, zero);
                    for (int c = op.group_in; c < op.group_in_padded; ++c) out[c] = 0;
                }
        }
        const size_t used = left + static_cast<size_t>(columns) * op.wide_c;
        std::memset(dst + used, 0, sizeof(int16_t) * (row_elements - used));
    }
}

// Rows of the u8 bordered input (the quads layout): codes as they are, the border and padding taps at the
// input zero point (the real zero), the channel padding 0 (its weights are 0).
inline void widen_rows_u8(const ConvOp& op, const uint8_t* input, uint8_t* wide, int row_begin, int row_end) {
    const size_t row_elements = static_cast<size_t>(op.wide_w) * op.wide_c;
    const int columns = std::max(0, std::min((op.in_w + op.sample_w - 1) / op.sample_w, op.wide_w - op.pad_left));
    const uint8_t zero = static_cast<uint8_t>(op.input_zero);
    for (int row = row_begin; row < row_end; ++row) {
        const int n = row / op.wide_h, y = row % op.wide_h * op.sample_h - op.pad_top;
        uint8_t* dst = wide + static_cast<size_t>(row) * row_elements;
        if (y < 0 || y >= op.in_h) {
            std::memset(dst, zero, row_elements);
            continue;
        }
        const uint8_t* src = input + (static_cast<size_t>(n) * op.in_h + y) * op.in_w * op.in_c;
        const size_t left = static_cast<size_t>(op.pad_left) * op.wide_c;
        std::memset(dst, zero, left);
        if (op.group_in == op.group_in_padded && op.sample_w == 1) {
            std::memcpy(dst + left, src, static_cast<size_t>(columns) * op.in_c);
        } else if (op.groups == 1 && op.group_in_padded == 4 && op.sample_w == 1) {  // an RGB stem: 3 codes and a 0
            for (int x = 0; x < columns; ++x) {
                uint8_t* out = dst + left + static_cast<size_t>(x) * 4;
                const uint8_t* in = src + static_cast<size_t>(x) * op.in_c;
                for (int c = 0; c < 4; ++c) out[c] = c < op.in_c ? in[c] : 0;
            }
        } else {
            for (int x = 0; x < columns; ++x)
                for (int g = 0; g < op.groups; ++g) {
                    uint8_t* out = dst + left + static_cast<size_t>(x) * op.wide_c + g * op.group_in_padded;
                    std::memcpy(out, src + static_cast<size_t>(x) * op.sample_w * op.in_c + g * op.group_in, op.group_in);
                    std::memset(out + op.group_in, 0, op.group_in_padded - op.group_in);
                }
        }
        const size_t used = left + static_cast<size_t>(columns) * op.wide_c;
        std::memset(dst + used, zero, row_elements - used);
    }
}

// Whether the quads layout's bordered input is the input itself: a 1x1 conv with stride 1 and no padding
// whose groups already hold whole quads of channels (the copy widen_rows_u8 would make is the identity).
inline bool reads_input_in_place(const ConvOp& op) {
    return op.quads && op.taps == 1 && op.stride_h == 1 && op.stride_w == 1 && op.pad_top == 0 && op.pad_left == 0 &&
           op.wide_c == op.in_c && op.wide_h == op.in_h && op.wide_w == op.in_w;
}

// A sparse column (kernels.h) as the dense micro-kernel reads a conv: its steps are the taps, one depth group each
// (the offsets passed for the taps' are the steps').
inline ConvOp steps_as_taps(const ConvOp& op, int steps) {
    ConvOp shape = op;
    shape.taps = steps;
    shape.group_in_padded = conv_depth_group(op);
    return shape;
}

// Whether Kernels has its own micro-kernel for sparse steps (multiply_steps); others run steps_as_taps.
template <class Kernels, class = void>
struct has_multiply_steps : std::false_type {};
template <class Kernels>
struct has_multiply_steps<Kernels, std::void_t<decltype(&Kernels::multiply_steps)>> : std::true_type {};

// Kernels supplies kTile (pixels per micro-kernel call), multiply and epilogue (and optionally multiply_steps); Element is the widened
// input's type (int16 centered, or uint8 bordered) and Weight the packed weights'.
template <class Kernels, class Element = int16_t, class Weight = int16_t>
void conv_driver(const ConvOp& op, const Element* wide, const Weight* packed, const uint8_t* skip, uint8_t* output,
                 Range range) {
    constexpr int kTile = Kernels::kTile;
    alignas(64) int32_t acc[kTile * 32];
    // With one group, a window row's kernel_w taps are contiguous in the widened input and in the packed
    // weights (taps, then depth): the micro-kernel reads the row as one tap kernel_w times as deep, fewer and
    // longer loops (an RGB stem's 9 taps of 4 channels become 3 of 12).
    ConvOp rows_as_taps = op;
    const bool merge_rows = op.groups == 1 && op.kernel_w > 1 && !op.sparse;
    if (merge_rows) rows_as_taps.taps = op.kernel_h, rows_as_taps.group_in_padded = op.kernel_w * op.group_in_padded;
    const ConvOp& shape = merge_rows ? rows_as_taps : op;
    const int tap_columns = merge_rows ? 1 : op.kernel_w;
    size_t tap_offsets[kMaxTaps];
    for (int ky = 0; ky < op.kernel_h; ++ky)
        for (int kx = 0; kx < tap_columns; ++kx)
            tap_offsets[ky * tap_columns + kx] = (static_cast<size_t>(ky) * op.wide_w + kx) * op.wide_c;
    const size_t block_stride = static_cast<size_t>(op.depth_padded) * op.block;
    const int depth_group = conv_depth_group(op);
    const int per_image = op.out_h * op.out_w;
    const int step_h = op.stride_h / op.sample_h, step_w = op.stride_w / op.sample_w;  // widened rows per output row
    // Tiles run in panels of kPanel: each block of weights is used by every tile of the panel before the
    // next block, so it stays in cache (the weights of a wide layer do not fit L1 all at once).
    constexpr int kPanel = 8;
    size_t bases[kPanel][kTile];
    // Position of the next pixel, advanced without divisions: image n, row oh, column ow.
    int n = range.pixel_begin / per_image, oh = range.pixel_begin % per_image / op.out_w, ow = range.pixel_begin % op.out_w;
    for (int panel = range.pixel_begin; panel < range.pixel_end; panel += kPanel * kTile) {
        const int panel_end = std::min(range.pixel_end, panel + kPanel * kTile);
        const int tiles = (panel_end - panel + kTile - 1) / kTile;
        for (int tile = 0; tile < tiles; ++tile) {
            const int count = std::min(kTile, panel_end - panel - tile * kTile);
            for (int m = 0; m < count; ++m) {
                bases[tile][m] = ((static_cast<size_t>(n) * op.wide_h + oh * step_h) * op.wide_w + ow * step_w) * op.wide_c;
                if (++ow == op.out_w) {
                    ow = 0;
                    if (++oh == op.out_h) oh = 0, ++n;
                }
            }
        }
        for (int column = range.column_begin; column < range.column_end; ++column) {
            const int group = column / op.blocks, block = column % op.blocks;
            const Weight* weights = packed + (static_cast<size_t>(group) * op.blocks + block) * block_stride;
            const Element* group_wide = wide + static_cast<size_t>(group) * op.group_in_padded;
            const int steps = op.sparse ? op.step_starts[column + 1] - op.step_starts[column] : 0;
            const size_t* step_offsets = op.sparse ? op.step_offsets + op.step_starts[column] : nullptr;
            if (op.sparse) weights = packed + static_cast<size_t>(op.step_starts[column]) * depth_group * op.block;
            ConvOp as_taps;  // the sparse column, for kernels without multiply_steps
            if constexpr (!has_multiply_steps<Kernels>::value) {
                if (op.sparse) as_taps = steps_as_taps(op, steps);
            }
            const int channel = group * op.group_out + block * op.block;
            const int width = std::min(op.block, op.group_out - block * op.block);
            for (int tile = 0; tile < tiles; ++tile) {
                const int first = panel + tile * kTile, count = std::min(kTile, panel_end - first);
                if (!op.sparse) {
                    Kernels::multiply(shape, group_wide, bases[tile], count, tap_offsets, weights, acc);
                } else if constexpr (has_multiply_steps<Kernels>::value) {
                    Kernels::multiply_steps(op, group_wide, bases[tile], count, step_offsets, steps, weights, acc);
                } else {
                    Kernels::multiply(as_taps, group_wide, bases[tile], count, step_offsets, weights, acc);
                }
                Kernels::epilogue(op, acc, count, first, channel, width, skip, output);
            }
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

// The lane layouts' window of output pixel (n, oh, ow): rows[tap] points at the tap's input pixel, or at
// op.zero_row for a tap outside the image (its zero-point codes add exactly 0 there).
inline void depthwise_tap_rows(const DepthwiseOp& op, const uint8_t* input, int n, int oh, int ow, const uint8_t** rows) {
    for (int ky = 0; ky < op.kernel_h; ++ky) {
        const int ih = oh * op.stride_h - op.pad_top + ky;
        const bool row_inside = ih >= 0 && ih < op.in_h;
        const uint8_t* row = input + (static_cast<size_t>(n) * op.in_h + (row_inside ? ih : 0)) * op.in_w * op.channels;
        for (int kx = 0; kx < op.kernel_w; ++kx) {
            const int iw = ow * op.stride_w - op.pad_left + kx;
            rows[ky * op.kernel_w + kx] = row_inside && iw >= 0 && iw < op.in_w ? row + static_cast<size_t>(iw) * op.channels : op.zero_row;
        }
    }
}

}  // namespace edge
