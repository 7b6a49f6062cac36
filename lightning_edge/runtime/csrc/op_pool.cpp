// Pooling: average_pool (global: one code per channel, the mean requantized) and max_pool (a window's
// maximum code, which is the maximum real value: a grid's order is its codes').
#include "op_registry.h"

namespace edge {

namespace {

// sums[c] += codes[c]; restrict lets the compiler vectorize it (uint8 may otherwise alias the sums).
void add_codes(int32_t* __restrict sums, const uint8_t* __restrict codes, int count) {
    for (int c = 0; c < count; ++c) sums[c] += codes[c];
}

class AveragePool final : public Operator {
  public:
    AveragePool(const Attributes& attrs, BuildContext& context) {
        channels_ = attrs.get_int("channels"), height_ = attrs.get_int("height"), width_ = attrs.get_int("width");
        check_positive({channels_, height_, width_}, "average_pool");
        multiplier_ = attrs.get_float("multiplier");
        in_ = attrs.get_grid("input_grid"), out_ = attrs.get_grid("output_grid");
        tensors_.inputs = {context.tensor_index(attrs, "input", static_cast<size_t>(channels_) * height_ * width_)};
        tensors_.output = context.tensor_index(attrs, "output", channels_);
        context.need_scratch(static_cast<size_t>(channels_) * sizeof(int32_t));
    }

    void run(const ExecutionContext& context) const override {
        const uint8_t* in = context.tensor(tensors_.inputs[0]);
        uint8_t* out = context.tensor(tensors_.output);
        const int plane = height_ * width_, channels = channels_;
        const float multiplier = multiplier_;
        const Grid grid_in = in_, grid_out = out_;  // locals: the uint8 stores may not alias them
        context.scheduler.parallel(context.batch, 1, [&](int begin, int end, int t) {
            int32_t* sums = static_cast<int32_t*>(context.scratch(t));
            for (int n = begin; n < end; ++n) {
                std::fill(sums, sums + channels, 0);
                const uint8_t* image = in + static_cast<size_t>(n) * plane * channels;
                for (int i = 0; i < plane; ++i) add_codes(sums, image + static_cast<size_t>(i) * channels, channels);
                const int32_t offset = grid_in.zero * plane;  // sum(q - z) = sum(q) - z * count
                for (int c = 0; c < channels; ++c)
                    out[static_cast<size_t>(n) * channels + c] = static_cast<uint8_t>(
                        round_onto_grid(static_cast<float>(sums[c] - offset) * multiplier, grid_out.zero, grid_out.low, grid_out.high));
            }
        });
    }

  private:
    int channels_, height_, width_;
    float multiplier_;
    Grid in_, out_;
};

class MaxPool final : public Operator {
  public:
    MaxPool(const Attributes& attrs, BuildContext& context) {
        channels_ = attrs.get_int("channels"), height_ = attrs.get_int("height"), width_ = attrs.get_int("width");
        out_h_ = attrs.get_int("out_h"), out_w_ = attrs.get_int("out_w");
        window_ = read_window(attrs, "max_pool");
        check_positive({channels_, height_, width_, out_h_, out_w_}, "max_pool");
        tensors_.inputs = {context.tensor_index(attrs, "input", static_cast<size_t>(channels_) * height_ * width_)};
        tensors_.output = context.tensor_index(attrs, "output", static_cast<size_t>(channels_) * out_h_ * out_w_);
    }

    void run(const ExecutionContext& context) const override {
        const uint8_t* in = context.tensor(tensors_.inputs[0]);
        uint8_t* out = context.tensor(tensors_.output);
        const Window w = window_;  // locals: the uint8 stores may not alias them
        const int channels = channels_, height = height_, width = width_, out_h = out_h_, out_w = out_w_;
        for (int n = 0; n < context.batch; ++n)
            for (int oh = 0; oh < out_h; ++oh)
                for (int ow = 0; ow < out_w; ++ow) {
                    uint8_t* dst = out + ((static_cast<size_t>(n) * out_h + oh) * out_w + ow) * channels;
                    std::fill(dst, dst + channels, 0);
                    for (int ky = 0; ky < w.kernel_h; ++ky) {
                        const int ih = oh * w.stride_h - w.pad_top + ky;
                        if (ih < 0 || ih >= height) continue;
                        for (int kx = 0; kx < w.kernel_w; ++kx) {
                            const int iw = ow * w.stride_w - w.pad_left + kx;
                            if (iw < 0 || iw >= width) continue;
                            const uint8_t* src = in + ((static_cast<size_t>(n) * height + ih) * width + iw) * channels;
                            for (int c = 0; c < channels; ++c) dst[c] = std::max(dst[c], src[c]);
                        }
                    }
                }
    }

  private:
    int channels_, height_, width_, out_h_, out_w_;
    Window window_;
};

std::unique_ptr<Operator> make_average_pool(const Attributes& attrs, BuildContext& context) {
    return std::make_unique<AveragePool>(attrs, context);
}

std::unique_ptr<Operator> make_max_pool(const Attributes& attrs, BuildContext& context) {
    return std::make_unique<MaxPool>(attrs, context);
}

}  // namespace

EDGE_REGISTER_OP("average_pool", make_average_pool);
EDGE_REGISTER_OP("max_pool", make_max_pool);

}  // namespace edge
