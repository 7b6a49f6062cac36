// The ends of a float region: to_float (uint8 NHWC codes -> float32 in ONNX NCHW order, float32(q - z) * s)
// and to_codes (float32 NCHW -> uint8 NHWC codes, round_onto_grid(x / s)), the plan's dequantize and quantize
// steps on a tensor in the middle of the plan. A (F,) tensor is channels = F, height = width = 1.
#include "float_region.h"
#include "op_registry.h"

namespace edge {

namespace {

// channels, height and width of the converted tensor, checked; returns its elements per sample.
size_t read_shape(const Attributes& attrs, const char* what, int& channels, int& plane) {
    const int c = attrs.get_int("channels"), h = attrs.get_int("height"), w = attrs.get_int("width");
    const size_t elements = element_count({c, h, w}, what);
    channels = c, plane = h * w;
    return elements;
}

class ToFloat final : public Operator {
  public:
    ToFloat(const Attributes& attrs, BuildContext& context) {
        const size_t elements = read_shape(attrs, "to_float", channels_, plane_);
        grid_ = attrs.get_grid("grid");
        tensors_.inputs = {context.tensor_index(attrs, "input", elements)};
        tensors_.output = context.tensor_index(attrs, "output", f32_bytes(elements));
    }

    void run(const ExecutionContext& context) const override {
        const uint8_t* in = context.tensor(tensors_.inputs[0]);
        float* out = reinterpret_cast<float*>(context.tensor(tensors_.output));
        const int plane = plane_, channels = channels_;
        const Grid grid = grid_;
        context.scheduler.parallel(context.batch * channels, 1, [&](int begin, int end, int) {
            for (int index = begin; index < end; ++index) {  // one (image, channel) plane, NHWC -> NCHW
                const int n = index / channels, c = index % channels;
                const uint8_t* src = in + static_cast<size_t>(n) * plane * channels + c;
                float* dst = out + static_cast<size_t>(index) * plane;
                for (int i = 0; i < plane; ++i)
                    dst[i] = static_cast<float>(src[static_cast<size_t>(i) * channels] - grid.zero) * grid.scale;
            }
        });
    }

  private:
    int channels_, plane_;
    Grid grid_;
};

class ToCodes final : public Operator {
  public:
    ToCodes(const Attributes& attrs, BuildContext& context) {
        const size_t elements = read_shape(attrs, "to_codes", channels_, plane_);
        grid_ = attrs.get_grid("grid");
        tensors_.inputs = {context.tensor_index(attrs, "input", f32_bytes(elements))};
        tensors_.output = context.tensor_index(attrs, "output", elements);
    }

    void run(const ExecutionContext& context) const override {
        const float* in = reinterpret_cast<const float*>(context.tensor(tensors_.inputs[0]));
        uint8_t* out = context.tensor(tensors_.output);
        const int plane = plane_, channels = channels_;
        const Grid grid = grid_;
        context.scheduler.parallel(context.batch * channels, 1, [&](int begin, int end, int) {
            for (int index = begin; index < end; ++index) {  // one (image, channel) plane, NCHW -> NHWC
                const int n = index / channels, c = index % channels;
                const float* src = in + static_cast<size_t>(index) * plane;
                uint8_t* dst = out + static_cast<size_t>(n) * plane * channels + c;
                for (int i = 0; i < plane; ++i)
                    dst[static_cast<size_t>(i) * channels] =
                        static_cast<uint8_t>(round_onto_grid(src[i] / grid.scale, grid.zero, grid.low, grid.high));
            }
        });
    }

  private:
    int channels_, plane_;
    Grid grid_;
};

std::unique_ptr<Operator> make_to_float(const Attributes& attrs, BuildContext& context) {
    return std::make_unique<ToFloat>(attrs, context);
}

std::unique_ptr<Operator> make_to_codes(const Attributes& attrs, BuildContext& context) {
    return std::make_unique<ToCodes>(attrs, context);
}

}  // namespace

EDGE_REGISTER_OP("to_float", make_to_float);
EDGE_REGISTER_OP("to_codes", make_to_codes);

}  // namespace edge
