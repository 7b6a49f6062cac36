// The plan's float32 ends, for what a plain FP32 file (or a float region at the graph's edge) reads and writes:
// float_input copies float32 NCHW input `index` into an f32 tensor (ONNX order: the same layout) and float_output
// copies an f32 tensor to float32 output `index`. They take the places of quantize and dequantize (engine.cpp).
#include <cstring>

#include "float_region.h"
#include "op_registry.h"

namespace edge {

namespace {

// channels * height * width of the float tensor at the plan's boundary, checked.
size_t boundary_size(const Attributes& attrs, const char* what) {
    return element_count({attrs.get_int("channels"), attrs.get_int("height"), attrs.get_int("width")}, what);
}

class FloatInput final : public Operator {
  public:
    FloatInput(const Attributes& attrs, BuildContext& context) {
        size_ = boundary_size(attrs, "float_input");
        index_ = boundary_index(attrs);
        tensors_.output = context.tensor_index(attrs, "output", f32_bytes(size_));
    }

    void run(const ExecutionContext& context) const override {
        const float* x = context.input(index_);
        if (!x) return;
        std::memcpy(context.tensor(tensors_.output), x, f32_bytes(size_) * context.batch);
    }

  private:
    size_t size_;
    int index_;
};

class FloatOutput final : public Operator {
  public:
    FloatOutput(const Attributes& attrs, BuildContext& context) {
        size_ = boundary_size(attrs, "float_output");
        index_ = boundary_index(attrs);
        tensors_.inputs = {context.tensor_index(attrs, "input", f32_bytes(size_))};
    }

    void run(const ExecutionContext& context) const override {
        float* result = context.output(index_);
        if (!result) return;
        std::memcpy(result, context.tensor(tensors_.inputs[0]), f32_bytes(size_) * context.batch);
    }

  private:
    size_t size_;
    int index_;
};

std::unique_ptr<Operator> make_float_input(const Attributes& attrs, BuildContext& context) {
    return std::make_unique<FloatInput>(attrs, context);
}

std::unique_ptr<Operator> make_float_output(const Attributes& attrs, BuildContext& context) {
    return std::make_unique<FloatOutput>(attrs, context);
}

}  // namespace

EDGE_REGISTER_OP("float_input", make_float_input);
EDGE_REGISTER_OP("float_output", make_float_output);

}  // namespace edge
