// Byte lookup through one 256-entry table, out[i] = table[in[i]]: the table op's kernel (a unary function on
// codes, INT8_SPEC rule 10). The scalar loop is the form for every CPU; where the CPU has AVX512_VBMI,
// vpermi2b looks up 64 codes in two halves of the table at once (the same bytes, so no path can differ).
#pragma once

#include <cstddef>
#include <cstdint>

namespace edge {

using LookupKernel = void (*)(const uint8_t* table, const uint8_t* in, uint8_t* out, size_t count);

inline void lookup_scalar(const uint8_t* table, const uint8_t* in, uint8_t* out, size_t count) {
    for (size_t i = 0; i < count; ++i) out[i] = table[in[i]];
}

// The AVX512_VBMI kernel; nullptr where the CPU or build lacks it.
LookupKernel lookup_avx512vbmi();

}  // namespace edge
