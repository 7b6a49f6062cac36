// The binary op's arithmetic (INT8_SPEC rule 12: each operand's float32 value from its table, one float32
// operation, a float32 division onto the output grid), shared by its scalar loops and the AVX-512 row kernel
// for the squeeze-excitation shape: a full operand times one value per (image, channel).
#pragma once

#include <cstdint>

#include "attributes.h"

namespace edge {

enum class BinaryOperation { Add, Sub, Mul, Div };

template <BinaryOperation op>
inline float apply(float a, float b) {
    if constexpr (op == BinaryOperation::Add) return a + b;
    if constexpr (op == BinaryOperation::Sub) return a - b;
    if constexpr (op == BinaryOperation::Mul) return a * b;
    return a / b;
}

// One pixel of out = Q(table(codes) op gate) (or Q(gate op table(codes)) with `gate_first`) over `channels`:
// `table` holds 256 floats, or 256 per channel with `per_channel_table`; `gate` one float per channel. Where
// the one table is a dequantization, float32(code - zero) * scale for every code (`affine`, checked entry by
// entry when the op loads), the kernel computes that in place of reading it.
struct GatedRow {
    const float* table;
    bool per_channel_table, gate_first;
    bool affine;
    int table_zero;
    float table_scale;
    const float* gate;
    int channels;
    Grid grid;
};
// Whether a table of 256 floats is float32(code - zero) * scale for some zero and scale, bit for bit; sets them.
bool affine_table(const float* table, int& zero, float& scale);

using GatedRowKernel = void (*)(BinaryOperation op, const GatedRow& row, const uint8_t* codes, uint8_t* out);

// The AVX-512 kernel (a gather from the table per 16 channels); nullptr where the CPU or build lacks AVX-512.
GatedRowKernel gated_row_avx512();

}  // namespace edge
