// depthwise: a depthwise convolution (one filter per channel) with its requantizing epilogue.
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
        c.weights = context.array<int32_t>(attrs, "weights", static_cast<size_t>(c.kernel_h) * c.kernel_w * c.channels);
        c.bias = context.array<int32_t>(attrs, "bias", c.channels);
        c.multiplier = context.array<float>(attrs, "multiplier", c.channels);
        const Grid in = attrs.get_grid("input_grid"), out = attrs.get_grid("output_grid");
        c.input_zero = in.zero, c.output_zero = out.zero, c.low = out.low, c.high = out.high;
        tensors_.inputs = {context.tensor_index(attrs, "input", static_cast<size_t>(c.in_h) * c.in_w * c.channels)};
        tensors_.output = context.tensor_index(attrs, "output", static_cast<size_t>(c.out_h) * c.out_w * c.channels);
    }

    void run(const ExecutionContext& context) const override {
        const uint8_t* in = context.tensor(tensors_.inputs[0]);
        uint8_t* out = context.tensor(tensors_.output);
        const Backend& backend = context.backend;
        const int pixels = context.batch * op_.out_h * op_.out_w;
        context.scheduler.parallel(pixels, 4, [&](int begin, int end, int) { backend.depthwise(op_, in, out, begin, end); });
    }

  private:
    DepthwiseOp op_{};
};

std::unique_ptr<Operator> make_depthwise(const Attributes& attrs, BuildContext& context) {
    return std::make_unique<Depthwise>(attrs, context);
}

}  // namespace

EDGE_REGISTER_OP("depthwise", make_depthwise);

}  // namespace edge
