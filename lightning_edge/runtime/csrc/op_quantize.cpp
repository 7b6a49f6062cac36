// The plan's two ends: quantize (float32 NCHW input `index` -> uint8 NHWC codes on a grid) and dequantize
// (codes -> float32 NCHW output `index`). A plan has its input ops first and its output ops last (engine.cpp).
#include <algorithm>
#include <cstring>

#include "op_registry.h"
#include "quantize_row.h"

namespace edge {

namespace {

// channels, height and width of the float tensor at the plan's boundary, checked; returns its size.
size_t read_boundary(const Attributes& attrs, const char* what, int& channels, int& height, int& width) {
    channels = attrs.get_int("channels"), height = attrs.get_int("height"), width = attrs.get_int("width");
    check_positive({channels, height, width}, what);
    return static_cast<size_t>(channels) * height * width;
}

QuantizeRow quantize_row_for(const Backend& backend) {
    const QuantizeRow vbmi = quantize_row_vbmi();
    return vbmi && std::strcmp(backend.name, "avx512") == 0 ? vbmi : quantize_row;
}

class Quantize final : public Operator {
  public:
    Quantize(const Attributes& attrs, BuildContext& context) {
        const size_t size = read_boundary(attrs, "quantize", channels_, height_, width_);
        grid_ = attrs.get_grid("grid");
        index_ = boundary_index(attrs);
        tensors_.output = context.tensor_index(attrs, "output", size);
        row_ = quantize_row_for(context.backend());
    }

    void run(const ExecutionContext& context) const override {
        uint8_t* out = context.tensor(tensors_.output);
        const float* x = context.input(index_);
        if (!x) return;
        const size_t plane = static_cast<size_t>(height_) * width_;
        const QuantizeRow row_kernel = row_;
        context.scheduler.parallel(context.batch * height_, 4, [&](int begin, int end, int) {
            for (int row = begin; row < end; ++row) {
                const int n = row / height_, y = row % height_;
                row_kernel(x + static_cast<size_t>(n) * channels_ * plane + static_cast<size_t>(y) * width_, plane,
                           channels_, width_, grid_, out + static_cast<size_t>(row) * width_ * channels_);
            }
        });
    }

  private:
    int channels_, height_, width_, index_;
    Grid grid_;
    QuantizeRow row_ = quantize_row;
};

class Dequantize final : public Operator {
  public:
    Dequantize(const Attributes& attrs, BuildContext& context) {
        const size_t size = read_boundary(attrs, "dequantize", channels_, height_, width_);
        grid_ = attrs.get_grid("grid");
        index_ = boundary_index(attrs);
        tensors_.inputs = {context.tensor_index(attrs, "input", size)};
    }

    void run(const ExecutionContext& context) const override {
        const uint8_t* in = context.tensor(tensors_.inputs[0]);
        float* result = context.output(index_);
        if (!result) return;
        const int plane = height_ * width_, channels = channels_;
        const Grid grid = grid_;  // a local: the float stores may not alias it
        for (int n = 0; n < context.batch; ++n)
            for (int c = 0; c < channels; ++c)
                for (int i = 0; i < plane; ++i)
                    result[(static_cast<size_t>(n) * channels + c) * plane + i] =
                        static_cast<float>(in[(static_cast<size_t>(n) * plane + i) * channels + c] - grid.zero) * grid.scale;
    }

  private:
    int channels_, height_, width_, index_;
    Grid grid_;
};

std::unique_ptr<Operator> make_quantize(const Attributes& attrs, BuildContext& context) {
    return std::make_unique<Quantize>(attrs, context);
}

std::unique_ptr<Operator> make_dequantize(const Attributes& attrs, BuildContext& context) {
    return std::make_unique<Dequantize>(attrs, context);
}

}  // namespace

EDGE_REGISTER_OP("quantize", make_quantize);
EDGE_REGISTER_OP("dequantize", make_dequantize);

}  // namespace edge
