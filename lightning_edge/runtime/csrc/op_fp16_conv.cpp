// fp16_conv: a 2-D convolution of an f32 (C, H, W) tensor in ONNX order (groups, stride, padding, dilation,
// optional bias, a fused residual add and Relu/Clip) computed in half precision as INT8_SPEC rule 21 fixes it:
// inputs and weights rounded to half, one fused multiply-add of halves per tap and input channel into a half
// accumulator, then the bias in float32; float32 out.
//
// The op first copies each sample's input into a zero-bordered NHWC block of halves (as doubles for the x86
// kernels, as half bits for NEON), so every window read is in bounds and a pixel's input channels are
// contiguous. Work is split into (sample, group, block of 16 output channels, output row, 8 pixels) tiles
// (fp16.h); weights are packed per block when the plan loads.
#include <limits>
#include <vector>

#include "float_region.h"
#include "fp16.h"
#include "op_registry.h"

namespace edge {

namespace {

class Fp16Conv final : public Operator {
  public:
    Fp16Conv(const Attributes& attrs, BuildContext& context) : g_(attrs, "fp16_conv") {
        group_in_ = g_.in_c / g_.groups, group_out_ = g_.out_c / g_.groups, taps_ = g_.kernel_h * g_.kernel_w;
        blocks_ = (group_out_ + kFp16Outputs - 1) / kFp16Outputs;
        wide_h_ = static_cast<int>((static_cast<int64_t>(g_.out_h) - 1) * g_.stride_h + g_.extent_h);
        wide_w_ = static_cast<int>((static_cast<int64_t>(g_.out_w) - 1) * g_.stride_w + g_.extent_w);
        sample_elements_ = element_count({wide_h_, wide_w_, g_.in_c}, "fp16_conv");
        const float* weights = context.array<float>(attrs, "weights",
                                                    element_count({g_.out_c, group_in_, g_.kernel_h, g_.kernel_w}, "fp16_conv"));
        if (attrs.has("bias")) bias_ = context.array<float>(attrs, "bias", static_cast<size_t>(g_.out_c));
        tensors_.inputs = {context.tensor_index(attrs, "input", f32_bytes(element_count({g_.in_c, g_.in_h, g_.in_w}, "fp16_conv")))};
        const size_t output_bytes = f32_bytes(element_count({g_.out_c, g_.out_h, g_.out_w}, "fp16_conv"));
        tensors_.output = context.tensor_index(attrs, "output", output_bytes);
        if (attrs.has("skip")) tensors_.inputs.push_back(context.tensor_index(attrs, "skip", output_bytes));
        low_ = attrs.has("low") ? attrs.get_float("low") : -std::numeric_limits<float>::infinity();
        high_ = attrs.has("high") ? attrs.get_float("high") : std::numeric_limits<float>::infinity();
        if (!(low_ <= high_)) throw std::invalid_argument("fp16_conv: the clamp's low bound is above its high bound");
        const std::string path = context.backend().name;
        if (path == "neon" && fp16_tile_neon()) kernel_ = fp16_tile_neon(), halves_ = true;
        else if (path == "avx512" && fp16_tile_avx512()) kernel_ = fp16_tile_avx512();
        else kernel_ = fp16_tile_exact;
        pack_weights(weights);
        for (int t = 0; t < taps_; ++t)
            tap_offsets_.push_back((static_cast<long>(t / g_.kernel_w) * g_.dilation_h * wide_w_ +
                                    static_cast<long>(t % g_.kernel_w) * g_.dilation_w) * g_.in_c);
        context.need_workspace(sample_elements_ * (halves_ ? sizeof(uint16_t) : sizeof(double)));
    }

    void run(const ExecutionContext& context) const override {
        const float* in = reinterpret_cast<const float*>(context.tensor(tensors_.inputs[0]));
        float* out = reinterpret_cast<float*>(context.tensor(tensors_.output));
        const float* skip = tensors_.inputs.size() > 1 ? reinterpret_cast<const float*>(context.tensor(tensors_.inputs[1])) : nullptr;
        void* block = context.workspace();
        context.scheduler.parallel(context.batch * wide_h_, 4, [&](int begin, int end, int) {
            for (int row = begin; row < end; ++row) copy_row(in, block, row);
        });
        const int strips = (g_.out_w + kFp16Pixels - 1) / kFp16Pixels;
        const int units = context.batch * g_.groups * blocks_ * g_.out_h * strips;
        context.scheduler.parallel(units, 4, [&](int begin, int end, int) {
            for (int unit = begin; unit < end; ++unit) {
                const int strip = unit % strips, y = unit / strips % g_.out_h, b = unit / strips / g_.out_h % blocks_;
                const int group = unit / strips / g_.out_h / blocks_ % g_.groups, n = unit / strips / g_.out_h / blocks_ / g_.groups;
                const int x = strip * kFp16Pixels, first = group * group_out_ + b * kFp16Outputs;
                const size_t origin = static_cast<size_t>(n) * sample_elements_ +
                                      (static_cast<size_t>(y) * g_.stride_h * wide_w_ + static_cast<size_t>(x) * g_.stride_w) * g_.in_c +
                                      static_cast<size_t>(group) * group_in_;
                const size_t place = ((static_cast<size_t>(n) * g_.out_c + first) * g_.out_h + y) * g_.out_w + x;
                Fp16Tile t;
                t.x64 = halves_ ? nullptr : static_cast<const double*>(block) + origin;
                t.x16 = halves_ ? static_cast<const uint16_t*>(block) + origin : nullptr;
                t.pixel_step = static_cast<long>(g_.stride_w) * g_.in_c;
                t.tap_offsets = tap_offsets_.data();
                t.taps = taps_, t.channels = group_in_;
                const size_t packed = (static_cast<size_t>(group) * blocks_ + b) * taps_ * group_in_ * kFp16Outputs;
                t.w64 = weights64_.data() + packed, t.w16 = weights16_.data() + packed;
                t.bias = bias_ ? bias_ + first : nullptr;
                t.skip = skip ? skip + place : nullptr;
                t.out = out + place;
                t.out_stride = static_cast<long>(g_.out_h) * g_.out_w;
                t.pixels = std::min(kFp16Pixels, g_.out_w - x), t.outputs = std::min(kFp16Outputs, group_out_ - b * kFp16Outputs);
                t.low = low_, t.high = high_;
                kernel_(t);
            }
        });
    }

  private:
    // weights (out_c, group_in, kh, kw) -> per (group, block of kFp16Outputs) [tap][channel][kFp16Outputs], the
    // outputs past the group's zero; as doubles and as half bits.
    void pack_weights(const float* weights) {
        const size_t size = static_cast<size_t>(g_.groups) * blocks_ * taps_ * group_in_ * kFp16Outputs;
        weights64_.assign(size, 0.0), weights16_.assign(size, 0);
        for (int o = 0; o < g_.out_c; ++o) {
            const int group = o / group_out_, row = o % group_out_;
            for (int c = 0; c < group_in_; ++c)
                for (int t = 0; t < taps_; ++t) {
                    const uint16_t bits = fp16_bits(weights[(static_cast<size_t>(o) * group_in_ + c) * taps_ + t]);
                    const size_t at = (((static_cast<size_t>(group) * blocks_ + row / kFp16Outputs) * taps_ + t) * group_in_ + c) *
                                          kFp16Outputs + row % kFp16Outputs;
                    weights16_[at] = bits, weights64_[at] = fp16_value(bits);
                }
        }
    }

    // Row `row` (sample * wide_h + y) of the bordered NHWC block: the input's values rounded to half, zero in the
    // padding and the columns past the last window.
    void copy_row(const float* in, void* block, int row) const {
        const int n = row / wide_h_, y = row % wide_h_ - g_.pad_top;
        const size_t first = (static_cast<size_t>(n) * wide_h_ + row % wide_h_) * wide_w_ * g_.in_c;
        for (int x = 0; x < wide_w_; ++x) {
            const int column = x - g_.pad_left;
            const bool inside = y >= 0 && y < g_.in_h && column >= 0 && column < g_.in_w;
            for (int c = 0; c < g_.in_c; ++c) {
                const uint16_t bits = inside ? fp16_bits(in[((static_cast<size_t>(n) * g_.in_c + c) * g_.in_h + y) * g_.in_w + column]) : 0;
                const size_t at = first + static_cast<size_t>(x) * g_.in_c + c;
                if (halves_) static_cast<uint16_t*>(block)[at] = bits;
                else static_cast<double*>(block)[at] = fp16_value(bits);
            }
        }
    }

    const FloatConvGeometry g_;
    int group_in_, group_out_, taps_, blocks_, wide_h_, wide_w_;
    size_t sample_elements_;
    float low_, high_;
    const float* bias_ = nullptr;
    std::vector<double> weights64_;
    std::vector<uint16_t> weights16_;
    std::vector<long> tap_offsets_;
    Fp16TileKernel kernel_ = nullptr;
    bool halves_ = false;  // the NEON kernel: the bordered block holds half bits, not doubles
};

std::unique_ptr<Operator> make_fp16_conv(const Attributes& attrs, BuildContext& context) {
    return std::make_unique<Fp16Conv>(attrs, context);
}

}  // namespace

EDGE_REGISTER_OP("fp16_conv", make_fp16_conv);

}  // namespace edge
