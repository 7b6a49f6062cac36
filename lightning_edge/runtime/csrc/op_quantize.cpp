// The plan's two ends: quantize (float32 NCHW input `index` -> uint8 NHWC codes on a grid) and dequantize
// (codes -> float32 NCHW output `index`). A plan has its input ops first and its output ops last (engine.cpp).
#include "op_registry.h"

namespace edge {

namespace {

// channels, height and width of the float tensor at the plan's boundary, checked; returns its size.
size_t read_boundary(const Attributes& attrs, const char* what, int& channels, int& height, int& width) {
    channels = attrs.get_int("channels"), height = attrs.get_int("height"), width = attrs.get_int("width");
    check_positive({channels, height, width}, what);
    return static_cast<size_t>(channels) * height * width;
}

class Quantize final : public Operator {
  public:
    Quantize(const Attributes& attrs, BuildContext& context) {
        const size_t size = read_boundary(attrs, "quantize", channels_, height_, width_);
        grid_ = attrs.get_grid("grid");
        index_ = boundary_index(attrs);
        tensors_.output = context.tensor_index(attrs, "output", size);
    }

    void run(const ExecutionContext& context) const override {
        uint8_t* out = context.tensor(tensors_.output);
        const float* x = context.input(index_);
        const int plane = height_ * width_, channels = channels_;
        const Grid grid = grid_;
        if (!x) return;
        // Rows of every image, kPixels pixels at a time: each channel's codes computed in a contiguous run (a
        // loop the compiler vectorizes, divisions included), then interleaved into NHWC.
        constexpr int kPixels = 64;
        const int rows = context.batch * height_;
        context.scheduler.parallel(rows, 4, [&](int begin, int end, int) {
            alignas(64) uint8_t codes[kPixels];
            for (int row = begin; row < end; ++row) {
                const int n = row / height_, y = row % height_;
                uint8_t* dst = out + (static_cast<size_t>(row) * width_) * channels;
                for (int x0 = 0; x0 < width_; x0 += kPixels) {
                    const int count = std::min(kPixels, width_ - x0);
                    for (int c = 0; c < channels; ++c) {
                        const float* src = x + (static_cast<size_t>(n) * channels + c) * plane + static_cast<size_t>(y) * width_ + x0;
                        for (int i = 0; i < count; ++i)
                            codes[i] = static_cast<uint8_t>(round_onto_grid(src[i] / grid.scale, grid.zero, grid.low, grid.high));
                        for (int i = 0; i < count; ++i) dst[static_cast<size_t>(x0 + i) * channels + c] = codes[i];
                    }
                }
            }
        });
    }

  private:
    int channels_, height_, width_, index_;
    Grid grid_;
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
