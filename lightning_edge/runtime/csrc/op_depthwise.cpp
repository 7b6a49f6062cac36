// depthwise: a depthwise convolution (one filter per channel) with its requantizing epilogue. Two layouts:
// int32 taps (every path), and the lane layouts with the zero-point compensation in the bias: u8 x s8 quads
// (AVX-512 VNNI, row-major taps or a kernel column's taps per quad) and int16 pairs (AVX2) (kernels.h, DepthwiseOp).
#include <string>
#include <vector>

#include "op_registry.h"

namespace edge {

namespace {

class Depthwise final : public Operator {
  public:
    Depthwise(const Attributes& attrs, BuildContext& context) {
        DepthwiseOp& c = op_;
        c.in_h = attrs.get_int("in_h"), c.in_w = attrs.get_int("in_w"), c.channels = attrs.get_int("channels");
        c.out_h = attrs.get_int("out_h"), c.out_w = attrs.get_int("out_w");
        assign_window(c, read_window(attrs, "depthwise"));
        check_positive({c.in_h, c.in_w, c.channels, c.out_h, c.out_w}, "depthwise");
        const Grid in = attrs.get_grid("input_grid"), out = attrs.get_grid("output_grid");
        c.input_zero = in.zero, c.output_zero = out.zero, c.low = out.low, c.high = out.high;
        const size_t taps = static_cast<size_t>(c.kernel_h) * c.kernel_w;
        const std::string layout = attrs.has("layout") ? attrs.get_string("layout") : "taps";
        if (layout == "quads" || layout == "pairs" || layout == "columns") {
            const bool columns = layout == "columns", quads = layout == "quads" || columns;
            c.layout = columns ? DepthwiseLayout::columns : quads ? DepthwiseLayout::quads : DepthwiseLayout::pairs;
            if (!(columns ? context.backend().depthwise_columns : quads ? context.backend().depthwise_quads : context.backend().depthwise_pairs))
                throw std::invalid_argument("depthwise: the " + layout + " layout needs kernels='" + (quads ? "avx512" : "avx2") + "'");
            if (columns && c.kernel_h > 8) throw std::invalid_argument("depthwise: the columns layout needs kernel_h <= 8");
            const size_t block = quads ? 64 : 16, group = quads ? 4 : 2;
            const size_t padded = (static_cast<size_t>(c.channels) + block - 1) / block * block;
            const size_t column_rows = (static_cast<size_t>(c.kernel_h) + 3) / 4 * 4;  // a column's quads
            const size_t slots = columns ? column_rows * c.kernel_w : (taps + group - 1) / group * group;
            const size_t weights = padded * slots;
            if (quads) c.weights8 = context.array<int8_t>(attrs, "weights", weights);
            else c.weights16 = context.array<int16_t>(attrs, "weights", weights);
            c.bias = context.array<int32_t>(attrs, "bias", padded);
            c.multiplier = context.array<float>(attrs, "multiplier", padded);
            zero_row_.assign(padded, static_cast<uint8_t>(c.input_zero));
            c.zero_row = zero_row_.data();
        } else if (layout != "taps") {
            throw std::invalid_argument("depthwise: unknown layout '" + layout + "' (taps, quads, pairs or columns)");
        } else {
            c.weights = context.array<int32_t>(attrs, "weights", taps * c.channels);
            c.bias = context.array<int32_t>(attrs, "bias", c.channels);
            c.multiplier = context.array<float>(attrs, "multiplier", c.channels);
        }
        tensors_.inputs = {context.tensor_index(attrs, "input", static_cast<size_t>(c.in_h) * c.in_w * c.channels)};
        tensors_.output = context.tensor_index(attrs, "output", static_cast<size_t>(c.out_h) * c.out_w * c.channels);
    }

    void run(const ExecutionContext& context) const override {
        const uint8_t* in = context.tensor(tensors_.inputs[0]);
        uint8_t* out = context.tensor(tensors_.output);
        const int pixels = context.batch * op_.out_h * op_.out_w;
        const auto kernel = depthwise_kernel(context.backend, op_.layout);
        context.scheduler.parallel(pixels, 4, [&](int begin, int end, int) { kernel(op_, in, out, begin, end); });
    }

    const DepthwiseOp* fusable_depthwise() const override { return &op_; }

  private:
    DepthwiseOp op_{};
    std::vector<uint8_t> zero_row_;  // the quads layout's stand-in for taps outside the image
};

std::unique_ptr<Operator> make_depthwise(const Attributes& attrs, BuildContext& context) {
    return std::make_unique<Depthwise>(attrs, context);
}

}  // namespace

EDGE_REGISTER_OP("depthwise", make_depthwise);

}  // namespace edge
