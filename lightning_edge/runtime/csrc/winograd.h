// Winograd F(2x2, 3x3) in exact integer arithmetic, shared by every backend.
//
// Input tiles d (4x4 of the widened, centered input) become V = B^T d B (|V| <= 4 * 255, int16); weights
// were packed as U = G' g G'^T with G' = 2G (|U| <= 9 * 128, int16), so sum_c U*V over channels is the
// GEMM the backends already run (vpmaddwd pairs cannot overflow), and Y = A^T M A = 4 * acc exactly: the
// compiler checks |4 * acc| < 2^31, so int32 wrap-around in between cannot change the result. 16 products
// per 2x2 outputs instead of 36: 2.25 times fewer multiplies than the direct conv.
#pragma once

#include "conv_driver.h"

namespace edge {

// V for tiles [first, first + count): V[p][t][c] for the 16 positions p = 4 * row + column.
inline void winograd_input_transform(const ConvOp& op, const int16_t* wide, int first, int count, int16_t* v) {
    const int per_image = op.tiles_h * op.tiles_w;
    const int channels = op.wide_c;
    const size_t position_stride = static_cast<size_t>(op.chunk) * channels;
    for (int t = 0; t < count; ++t) {
        const int tile = first + t, n = tile / per_image, rest = tile % per_image;
        const int th = rest / op.tiles_w, tw = rest % op.tiles_w;
        const int16_t* d = wide + ((static_cast<size_t>(n) * op.wide_h + 2 * th) * op.wide_w + 2 * tw) * channels;
        const size_t row = static_cast<size_t>(op.wide_w) * channels;
        const int16_t *d0 = d, *d1 = d + row, *d2 = d + 2 * row, *d3 = d + 3 * row;
        int16_t* out = v + static_cast<size_t>(t) * channels;
        for (int c = 0; c < channels; ++c) {
            int16_t r[4][4];
            for (int j = 0; j < 4; ++j) {  // rows: B^T d
                const int16_t a = d0[j * channels + c], b = d1[j * channels + c];
                const int16_t e = d2[j * channels + c], f = d3[j * channels + c];
                r[0][j] = static_cast<int16_t>(a - e);
                r[1][j] = static_cast<int16_t>(b + e);
                r[2][j] = static_cast<int16_t>(e - b);
                r[3][j] = static_cast<int16_t>(b - f);
            }
            for (int i = 0; i < 4; ++i) {  // columns: (B^T d) B
                out[(4 * i + 0) * position_stride + c] = static_cast<int16_t>(r[i][0] - r[i][2]);
                out[(4 * i + 1) * position_stride + c] = static_cast<int16_t>(r[i][1] + r[i][2]);
                out[(4 * i + 2) * position_stride + c] = static_cast<int16_t>(r[i][2] - r[i][1]);
                out[(4 * i + 3) * position_stride + c] = static_cast<int16_t>(r[i][1] - r[i][3]);
            }
        }
    }
}

// Y = A^T m A for one channel: the 2x2 outputs times 4.
inline void winograd_output_transform(const int32_t m[16], int32_t y[4]) {
    int32_t s[2][4];
    for (int j = 0; j < 4; ++j) {
        const uint32_t a = static_cast<uint32_t>(m[j]), b = static_cast<uint32_t>(m[4 + j]);
        const uint32_t c = static_cast<uint32_t>(m[8 + j]), d = static_cast<uint32_t>(m[12 + j]);
        s[0][j] = static_cast<int32_t>(a + b + c);  // wrap-around is exact here (see the file comment)
        s[1][j] = static_cast<int32_t>(b - c - d);
    }
    for (int i = 0; i < 2; ++i) {
        const uint32_t a = static_cast<uint32_t>(s[i][0]), b = static_cast<uint32_t>(s[i][1]);
        const uint32_t c = static_cast<uint32_t>(s[i][2]), d = static_cast<uint32_t>(s[i][3]);
        y[2 * i] = static_cast<int32_t>(a + b + c);
        y[2 * i + 1] = static_cast<int32_t>(b - c - d);
    }
}

// The whole Winograd conv of a range of tiles. Kernels::multiply runs the 16 per-position GEMMs;
// Kernels::winograd_store transforms M back and runs the epilogue.
template <class Kernels>
void winograd_driver(const ConvOp& op, const int16_t* wide, const uint8_t* skip, uint8_t* output, int tile_begin,
                     int tile_end, void* scratch) {
    uintptr_t address = (reinterpret_cast<uintptr_t>(scratch) + 63) & ~static_cast<uintptr_t>(63);
    int16_t* v = reinterpret_cast<int16_t*>(address);
    int32_t* m = reinterpret_cast<int32_t*>((address + 16 * static_cast<size_t>(op.chunk) * op.wide_c * sizeof(int16_t) + 63) &
                                            ~static_cast<uintptr_t>(63));
    ConvOp gemm = op;  // each position is a 1x1 GEMM over the transformed channels
    gemm.taps = 1;
    gemm.depth_padded = op.group_in_padded;
    const size_t zero_offset[1] = {0};
    const size_t block_stride = static_cast<size_t>(16) * (op.group_in_padded / 2) * op.block * 2;
    const size_t position_weights = static_cast<size_t>(op.group_in_padded / 2) * op.block * 2;
    size_t bases[kTilePixels];
    for (int first = tile_begin; first < tile_end; first += op.chunk) {
        const int count = std::min(op.chunk, tile_end - first);
        winograd_input_transform(op, wide, first, count, v);
        for (int group = 0; group < op.groups; ++group)
            for (int block = 0; block < op.blocks; ++block) {
                const int16_t* weights = op.weights + (static_cast<size_t>(group) * op.blocks + block) * block_stride;
                for (int p = 0; p < 16; ++p) {
                    const int16_t* vp = v + static_cast<size_t>(p) * op.chunk * op.wide_c + group * op.group_in_padded;
                    for (int t = 0; t < count; t += kTilePixels) {
                        const int rows = std::min(kTilePixels, count - t);
                        for (int r = 0; r < rows; ++r) bases[r] = static_cast<size_t>(t + r) * op.wide_c;
                        Kernels::multiply(gemm, vp, bases, rows, zero_offset, weights + p * position_weights,
                                          m + (static_cast<size_t>(p) * op.chunk + t) * op.block);
                    }
                }
                const int channel = group * op.group_out + block * op.block;
                const int width = std::min(op.block, op.group_out - block * op.block);
                Kernels::winograd_store(op, m, first, count, channel, width, skip, output);
            }
    }
}

// Scalar store: for each tile and channel, Y = A^T M A, acc = Y / 4, then the conv epilogue on the
// tile's outputs that lie inside the image. `from` skips channels a vector path already wrote.
inline void winograd_store_scalar(const ConvOp& op, const int32_t* m, int first, int count, int channel, int width,
                                  const uint8_t* skip, uint8_t* output, int from = 0) {
    const int per_image = op.tiles_h * op.tiles_w;
    for (int t = 0; t < count; ++t) {
        const int tile = first + t, n = tile / per_image, rest = tile % per_image;
        const int oh = 2 * (rest / op.tiles_w), ow = 2 * (rest % op.tiles_w);
        for (int j = from; j < width; ++j) {
            int32_t values[16], y[4];
            for (int p = 0; p < 16; ++p) values[p] = m[(static_cast<size_t>(p) * op.chunk + t) * op.block + j];
            winograd_output_transform(values, y);
            for (int k = 0; k < 4; ++k) {
                const int h = oh + k / 2, w = ow + k % 2;
                if (h >= op.out_h || w >= op.out_w) continue;
                const size_t index = ((static_cast<size_t>(n) * op.out_h + h) * op.out_w + w) * op.out_c + channel + j;
                output[index] = conv_epilogue(op, y[k] >> 2, channel + j, skip, index);
            }
        }
    }
}

}  // namespace edge
