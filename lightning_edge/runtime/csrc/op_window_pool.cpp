// window_average_pool: average pooling over windows (INT8_SPEC rule 9/13): the exact sum of q - z over the
// window's elements inside the input, times float32(s_x) / (float32(s_y) * float32(count)), requantized.
// count is the elements inside the input, or (count_include_pad) those inside the input and its explicit
// padding, which count as real 0; a ceil_mode overhang never counts.
#include "op_registry.h"

namespace edge {

namespace {

class WindowAveragePool final : public Operator {
  public:
    WindowAveragePool(const Attributes& attrs, BuildContext& context) {
        channels_ = attrs.get_int("channels"), height_ = attrs.get_int("height"), width_ = attrs.get_int("width");
        out_h_ = attrs.get_int("out_h"), out_w_ = attrs.get_int("out_w");
        window_ = read_window(attrs, "window_average_pool");
        pad_bottom_ = attrs.get_int("pad_bottom"), pad_right_ = attrs.get_int("pad_right");
        check_positive({channels_, height_, width_, out_h_, out_w_}, "window_average_pool");
        if (pad_bottom_ < 0 || pad_right_ < 0 || pad_bottom_ >= window_.kernel_h || pad_right_ >= window_.kernel_w)
            throw std::invalid_argument("window_average_pool: padding out of range");
        include_pad_ = attrs.has("count_include_pad") && attrs.get_int("count_include_pad") != 0;
        in_ = attrs.get_grid("input_grid"), out_ = attrs.get_grid("output_grid");
        tensors_.inputs = {context.tensor_index(attrs, "input", static_cast<size_t>(channels_) * height_ * width_)};
        tensors_.output = context.tensor_index(attrs, "output", static_cast<size_t>(channels_) * out_h_ * out_w_);
        context.need_scratch(static_cast<size_t>(channels_) * sizeof(int32_t));
    }

    void run(const ExecutionContext& context) const override {
        const uint8_t* in = context.tensor(tensors_.inputs[0]);
        uint8_t* out = context.tensor(tensors_.output);
        const Window w = window_;
        const int channels = channels_, height = height_, width = width_, out_h = out_h_, out_w = out_w_;
        const Grid grid_in = in_, grid_out = out_;
        context.scheduler.parallel(context.batch * out_h * out_w, 4, [&](int begin, int end, int t) {
            int32_t* sums = static_cast<int32_t*>(context.scratch(t));
            for (int pixel = begin; pixel < end; ++pixel) {
                const int n = pixel / (out_h * out_w), oh = pixel / out_w % out_h, ow = pixel % out_w;
                std::fill(sums, sums + channels, 0);
                int inside = 0, padded = 0;
                for (int ky = 0; ky < w.kernel_h; ++ky) {
                    const int ih = oh * w.stride_h - w.pad_top + ky;
                    const bool row_padded = ih >= -w.pad_top && ih < height + pad_bottom_;
                    for (int kx = 0; kx < w.kernel_w; ++kx) {
                        const int iw = ow * w.stride_w - w.pad_left + kx;
                        padded += row_padded && iw >= -w.pad_left && iw < width + pad_right_;
                        if (ih < 0 || ih >= height || iw < 0 || iw >= width) continue;
                        ++inside;
                        const uint8_t* src = in + ((static_cast<size_t>(n) * height + ih) * width + iw) * channels;
                        for (int c = 0; c < channels; ++c) sums[c] += src[c];
                    }
                }
                const int count = include_pad_ ? padded : inside;
                const float multiplier = grid_in.scale / (grid_out.scale * static_cast<float>(count));
                uint8_t* dst = out + static_cast<size_t>(pixel) * channels;
                for (int c = 0; c < channels; ++c)
                    dst[c] = static_cast<uint8_t>(round_onto_grid(static_cast<float>(sums[c] - grid_in.zero * inside) * multiplier,
                                                                  grid_out.zero, grid_out.low, grid_out.high));
            }
        });
    }

  private:
    int channels_, height_, width_, out_h_, out_w_, pad_bottom_, pad_right_;
    bool include_pad_ = false;
    Window window_{};
    Grid in_{}, out_{};
};

std::unique_ptr<Operator> make_window_average_pool(const Attributes& attrs, BuildContext& context) {
    return std::make_unique<WindowAveragePool>(attrs, context);
}

}  // namespace

EDGE_REGISTER_OP("window_average_pool", make_window_average_pool);

}  // namespace edge
