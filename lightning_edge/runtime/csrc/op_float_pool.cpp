// float_pool: MaxPool or AveragePool of an f32 (C, H, W) tensor in ONNX order, as reference.max_pool and
// reference.average_pool compute them: the window maximum, NaN-propagating, where padding never wins (a window
// with nothing inside is -inf, as numpy's -inf padding gives); or the float64 sum of the window's elements
// inside the input divided by the count (the elements inside the input, or with count_include_pad those inside
// the input and its explicit padding; a ceil_mode overhang never counts), rounded to float32 once.
#include <limits>

#include "float_math.h"
#include "float_region.h"
#include "op_registry.h"

namespace edge {

namespace {

class FloatPool final : public Operator {
  public:
    FloatPool(const Attributes& attrs, BuildContext& context) {
        const std::string operation = attrs.get_string("operation");
        if (operation != "max" && operation != "average")
            throw std::invalid_argument("float_pool: unknown operation '" + operation + "'");
        max_ = operation == "max";
        channels_ = attrs.get_int("channels"), height_ = attrs.get_int("height"), width_ = attrs.get_int("width");
        out_h_ = attrs.get_int("out_h"), out_w_ = attrs.get_int("out_w");
        kernel_h_ = attrs.get_int("kernel_h"), kernel_w_ = attrs.get_int("kernel_w");
        stride_h_ = attrs.get_int("stride_h"), stride_w_ = attrs.get_int("stride_w");
        dilation_h_ = attrs.get_int("dilation_h"), dilation_w_ = attrs.get_int("dilation_w");
        pad_top_ = attrs.get_int("pad_top"), pad_left_ = attrs.get_int("pad_left");
        pad_bottom_ = attrs.get_int("pad_bottom"), pad_right_ = attrs.get_int("pad_right");
        check_positive({channels_, height_, width_, out_h_, out_w_, kernel_h_, kernel_w_, stride_h_, stride_w_, dilation_h_,
                        dilation_w_}, "float_pool");
        const int64_t extent_h = static_cast<int64_t>(kernel_h_ - 1) * dilation_h_ + 1;
        const int64_t extent_w = static_cast<int64_t>(kernel_w_ - 1) * dilation_w_ + 1;
        if (extent_h > (1 << 24) || extent_w > (1 << 24))
            throw std::invalid_argument("float_pool: the dilated window is too large");
        for (int pad : {pad_top_, pad_bottom_})
            if (pad < 0 || pad >= extent_h) throw std::invalid_argument("float_pool: padding must be smaller than the window");
        for (int pad : {pad_left_, pad_right_})
            if (pad < 0 || pad >= extent_w) throw std::invalid_argument("float_pool: padding must be smaller than the window");
        include_pad_ = attrs.has("count_include_pad") && attrs.get_int("count_include_pad") != 0;
        tensors_.inputs = {context.tensor_index(attrs, "input", f32_bytes(element_count({channels_, height_, width_}, "float_pool")))};
        tensors_.output = context.tensor_index(attrs, "output", f32_bytes(element_count({channels_, out_h_, out_w_}, "float_pool")));
    }

    void run(const ExecutionContext& context) const override {
        const float* in = reinterpret_cast<const float*>(context.tensor(tensors_.inputs[0]));
        float* out = reinterpret_cast<float*>(context.tensor(tensors_.output));
        const size_t in_plane = static_cast<size_t>(height_) * width_, out_plane = static_cast<size_t>(out_h_) * out_w_;
        context.scheduler.parallel(context.batch * channels_, 1, [&](int begin, int end, int) {
            for (int plane = begin; plane < end; ++plane)  // one (sample, channel) plane
                for (int oh = 0; oh < out_h_; ++oh)
                    for (int ow = 0; ow < out_w_; ++ow)
                        out[plane * out_plane + static_cast<size_t>(oh) * out_w_ + ow] = window(in + plane * in_plane, oh, ow);
        });
    }

  private:
    float window(const float* x, int oh, int ow) const {
        const int64_t top = static_cast<int64_t>(oh) * stride_h_ - pad_top_, left = static_cast<int64_t>(ow) * stride_w_ - pad_left_;
        float best = -std::numeric_limits<float>::infinity();
        double total = 0;
        int64_t inside = 0, padded = 0;
        for (int a = 0; a < kernel_h_; ++a) {
            const int64_t ih = top + static_cast<int64_t>(a) * dilation_h_;
            const bool row_padded = ih >= -pad_top_ && ih < height_ + pad_bottom_;
            for (int b = 0; b < kernel_w_; ++b) {
                const int64_t iw = left + static_cast<int64_t>(b) * dilation_w_;
                padded += row_padded && iw >= -pad_left_ && iw < width_ + pad_right_;
                if (ih < 0 || ih >= height_ || iw < 0 || iw >= width_) continue;
                const float v = x[ih * width_ + iw];
                ++inside;
                if (max_) best = maximum(best, v);
                else total += static_cast<double>(v);
            }
        }
        if (max_) return best;
        return static_cast<float>(total / static_cast<double>(include_pad_ ? padded : inside));
    }

    bool max_, include_pad_;
    int channels_, height_, width_, out_h_, out_w_, kernel_h_, kernel_w_, stride_h_, stride_w_, dilation_h_, dilation_w_;
    int pad_top_, pad_left_, pad_bottom_, pad_right_;
};

std::unique_ptr<Operator> make_float_pool(const Attributes& attrs, BuildContext& context) {
    return std::make_unique<FloatPool>(attrs, context);
}

}  // namespace

EDGE_REGISTER_OP("float_pool", make_float_pool);

}  // namespace edge
