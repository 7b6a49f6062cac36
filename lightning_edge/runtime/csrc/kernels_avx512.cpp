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
    if constexpr (Block == 16) {
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

template <int Block, int Count = 12>
inline void multiply_quads_count(const ConvOp& op, const uint8_t* wide, const size_t* bases, int count, const size_t* taps,
                                 const int8_t* weights, int32_t* acc) {
    if constexpr (Count > 1) {
        if (count < Count) return multiply_quads_count<Block, Count - 1>(op, wide, bases, count, taps, weights, acc);
    }
    multiply_quads<Count, Block>(op, wide, bases, taps, weights, acc);
}

struct Avx512Kernels {
    static constexpr int kTile = 12;

    static void multiply(const ConvOp& op, const uint8_t* wide, const size_t* bases, int count, const size_t* taps,
                         const int8_t* weights, int32_t* acc) {
        if (op.block == 16) multiply_quads_count<16>(op, wide, bases, count, taps, weights, acc);
        else multiply_quads_count<8>(op, wide, bases, count, taps, weights, acc);
    }

    static void epilogue(const ConvOp& op, const int32_t* acc, int count, int first, int channel, int width,
                         const uint8_t* skip, uint8_t* output) {
        epilogue_tile(op, acc, count, first, channel, width, skip, output);
    }
};

void avx512_conv8(const ConvOp& op, const uint8_t* wide, const uint8_t* skip, uint8_t* output, Range range) {
    conv_driver<Avx512Kernels, uint8_t, int8_t>(op, wide, op.weights8, skip, output, range);
}

}  // namespace

const Backend* avx512_backend() {
    const Backend* avx2 = avx2_backend();
    if (!avx2) return nullptr;
    // int16 kernels (Winograd, depthwise, odd layouts) are AVX2's; the u8 x s8 GEMM is VNNI.
    static const Backend backend{"avx512", avx2->widen, avx2->conv, avx2->depthwise, avx512_conv8, avx2->winograd};
    return &backend;
}

}  // namespace edge

#pragma GCC pop_options

#else
namespace edge {
const Backend* avx512_backend() { return nullptr; }
}  // namespace edge
#endif
