// FP16 convolution arithmetic (INT8_SPEC rule 21): float32 values rounded to IEEE half precision, and the tile
// every fp16_conv runs, out[o][p] = float32(acc) + bias, where acc, a half from +0, takes one fused
// multiply-add of halves per tap (row-major) and input channel (in order), rounded once to half. Three
// implementations give the same bits: NEON's vfma of halves on aarch64 CPUs with FEAT_FP16, an AVX-512 one in
// double lanes, and the exact scalar one: the exact product of two halves plus a half, rounded to double (where
// that rounding is inexact the value is far from any half's rounding tie), then to half.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace edge {

// Output pixels (along one output row) and output channels of one tile.
constexpr int kFp16Pixels = 8;
constexpr int kFp16Outputs = 16;

// double -> half bits: to nearest, ties to even; past 65504 (from 65520 on) to infinity; half denormals kept;
// a NaN becomes the quiet NaN of its sign.
inline uint16_t fp16_bits(double value) {
    uint64_t u;
    std::memcpy(&u, &value, sizeof u);
    const uint16_t sign = static_cast<uint16_t>((u >> 48) & 0x8000u);
    const uint64_t magnitude = u & 0x7fffffffffffffffull;
    if (magnitude > 0x7ff0000000000000ull) return sign | 0x7e00u;
    if (magnitude >= 0x40effe0000000000ull) return sign | 0x7c00u;  // 65520 and up, infinity included
    const double a = std::fabs(value);
    if (a < 6.103515625e-05) return sign | static_cast<uint16_t>(std::nearbyint(a * 16777216.0));  // below 2^-14: multiples of 2^-24
    int exponent = static_cast<int>(magnitude >> 52) - 1023;  // -14 .. 15
    const uint64_t mantissa = magnitude & 0xfffffffffffffull;
    uint64_t kept = (mantissa + (uint64_t{1} << 41) - 1 + ((mantissa >> 42) & 1)) >> 42;  // 10 bits, ties to even
    if (kept == 1024) kept = 0, ++exponent;
    if (exponent > 15) return sign | 0x7c00u;
    return static_cast<uint16_t>(sign | (exponent + 15) << 10 | kept);
}

inline double fp16_value(uint16_t bits) {
    const double sign = bits & 0x8000u ? -1.0 : 1.0;
    const int exponent = (bits >> 10) & 0x1f, mantissa = bits & 0x3ff;
    if (exponent == 0x1f) return mantissa ? std::nan("") : sign * INFINITY;
    if (exponent == 0) return sign * std::ldexp(mantissa, -24);
    return sign * std::ldexp(1024 + mantissa, exponent - 25);
}

// One tile: `outputs` (<= kFp16Outputs) output channels of `pixels` (<= kFp16Pixels) neighbouring outputs of one
// output row. The input is the sample's zero-bordered NHWC copy, as doubles (x64) or half bits (x16, the NEON
// kernel's): pixel p's window origin is element p * pixel_step of it, tap t's input channel c element
// tap_offsets[t] + c of that. Weights are [taps][channels][kFp16Outputs] (outputs past `outputs` zero), as
// doubles (w64) and half bits (w16); bias has `outputs` floats or is nullptr. Output o of pixel p goes to
// out[o * out_stride + p]: float32(acc) + bias, plus skip[o * out_stride + p] where skip is set, clamped to
// [low, high].
struct Fp16Tile {
    const double* x64;
    const uint16_t* x16;
    long pixel_step;
    const long* tap_offsets;
    int taps, channels;
    const double* w64;
    const uint16_t* w16;
    const float* bias;
    const float* skip;
    float* out;
    long out_stride;
    int pixels, outputs;
    float low, high;
};

using Fp16TileKernel = void (*)(const Fp16Tile& tile);

// The exact scalar implementation (any CPU; reads x64 and w64).
void fp16_tile_exact(const Fp16Tile& tile);
// AVX-512F in double lanes (reads x64 and w64; nullptr where the build or CPU lacks AVX-512F).
Fp16TileKernel fp16_tile_avx512();
// NEON half arithmetic (reads x16 and w16; nullptr off aarch64 or on a CPU without FEAT_FP16).
Fp16TileKernel fp16_tile_neon();

}  // namespace edge
