// float_conv: a 2-D convolution of an f32 (C, H, W) tensor in ONNX order (groups, depthwise included, stride,
// padding, dilation, optional bias), as reference.conv computes it (INT8_SPEC rule 17): the float32 products
// summed in float64 with the bias, rounded to float32 once. Weights are float32 (out_c, in_c / groups, kh, kw),
// ONNX's own layout. Each (sample, output channel) plane is one unit of work: for every input channel of its
// group and every tap, a float64 row update over the output columns whose input column lies inside the image
// (padding adds nothing), which the compiler vectorizes.
#include <algorithm>
#include <vector>

#include "float_region.h"
#include "op_registry.h"

namespace edge {

namespace {

class FloatConv final : public Operator {
  public:
    FloatConv(const Attributes& attrs, BuildContext& context) {
        in_c_ = attrs.get_int("in_c"), in_h_ = attrs.get_int("in_h"), in_w_ = attrs.get_int("in_w");
        out_c_ = attrs.get_int("out_c"), out_h_ = attrs.get_int("out_h"), out_w_ = attrs.get_int("out_w");
        groups_ = attrs.get_int("groups");
        kernel_h_ = attrs.get_int("kernel_h"), kernel_w_ = attrs.get_int("kernel_w");
        stride_h_ = attrs.get_int("stride_h"), stride_w_ = attrs.get_int("stride_w");
        dilation_h_ = attrs.get_int("dilation_h"), dilation_w_ = attrs.get_int("dilation_w");
        pad_top_ = attrs.get_int("pad_top"), pad_left_ = attrs.get_int("pad_left");
        check_positive({in_c_, in_h_, in_w_, out_c_, out_h_, out_w_, groups_, kernel_h_, kernel_w_, stride_h_, stride_w_,
                        dilation_h_, dilation_w_}, "float_conv");
        if (in_c_ % groups_ || out_c_ % groups_)
            throw std::invalid_argument("float_conv: channels do not divide into groups");
        const int64_t extent_h = static_cast<int64_t>(kernel_h_ - 1) * dilation_h_ + 1;
        const int64_t extent_w = static_cast<int64_t>(kernel_w_ - 1) * dilation_w_ + 1;
        if (extent_h > (1 << 24) || extent_w > (1 << 24))
            throw std::invalid_argument("float_conv: the dilated kernel is too large");
        if (pad_top_ < 0 || pad_left_ < 0 || pad_top_ >= extent_h || pad_left_ >= extent_w)
            throw std::invalid_argument("float_conv: padding must be smaller than the dilated kernel");
        weights_ = context.array<float>(attrs, "weights",
                                        element_count({out_c_, in_c_ / groups_, kernel_h_, kernel_w_}, "float_conv"));
        if (attrs.has("bias")) bias_ = context.array<float>(attrs, "bias", static_cast<size_t>(out_c_));
        tensors_.inputs = {context.tensor_index(attrs, "input", f32_bytes(element_count({in_c_, in_h_, in_w_}, "float_conv")))};
        tensors_.output = context.tensor_index(attrs, "output", f32_bytes(element_count({out_c_, out_h_, out_w_}, "float_conv")));
        context.need_scratch(static_cast<size_t>(out_h_) * out_w_ * sizeof(double));
    }

    void run(const ExecutionContext& context) const override {
        const float* in = reinterpret_cast<const float*>(context.tensor(tensors_.inputs[0]));
        float* out = reinterpret_cast<float*>(context.tensor(tensors_.output));
        context.scheduler.parallel(context.batch * out_c_, 1, [&](int begin, int end, int thread) {
            double* acc = static_cast<double*>(context.scratch(thread));
            for (int unit = begin; unit < end; ++unit) plane(in, out, unit / out_c_, unit % out_c_, acc);
        });
    }

  private:
    // Output channel `o` of sample `n`, accumulated in `acc` (out_h * out_w float64).
    void plane(const float* in, float* out, int n, int o, double* acc) const {
        const int per_group = in_c_ / groups_, group = o / (out_c_ / groups_);
        const size_t pixels = static_cast<size_t>(out_h_) * out_w_, in_plane = static_cast<size_t>(in_h_) * in_w_;
        std::fill(acc, acc + pixels, bias_ ? static_cast<double>(bias_[o]) : 0.0);
        const float* w = weights_ + static_cast<size_t>(o) * per_group * kernel_h_ * kernel_w_;
        for (int ci = 0; ci < per_group; ++ci) {
            const float* x = in + (static_cast<size_t>(n) * in_c_ + static_cast<size_t>(group) * per_group + ci) * in_plane;
            for (int a = 0; a < kernel_h_; ++a)
                for (int b = 0; b < kernel_w_; ++b) {
                    const double weight = *w++;
                    const int dy = a * dilation_h_ - pad_top_, dx = b * dilation_w_ - pad_left_;
                    const int x_begin = first_inside(dx, stride_w_), x_end = end_inside(dx, stride_w_, in_w_, out_w_);
                    const int y_begin = first_inside(dy, stride_h_), y_end = end_inside(dy, stride_h_, in_h_, out_h_);
                    for (int y = y_begin; y < y_end; ++y) {
                        const float* row = x + static_cast<size_t>(y * stride_h_ + dy) * in_w_;
                        double* target = acc + static_cast<size_t>(y) * out_w_;
                        if (stride_w_ == 1)
                            for (int i = x_begin; i < x_end; ++i) target[i] += weight * static_cast<double>(row[i + dx]);
                        else
                            for (int i = x_begin; i < x_end; ++i)
                                target[i] += weight * static_cast<double>(row[static_cast<int64_t>(i) * stride_w_ + dx]);
                    }
                }
        }
        float* result = out + (static_cast<size_t>(n) * out_c_ + o) * pixels;
        for (size_t i = 0; i < pixels; ++i) result[i] = static_cast<float>(acc[i]);
    }

    // The first output index i with i * stride + offset >= 0.
    static int first_inside(int offset, int stride) { return offset >= 0 ? 0 : (-offset + stride - 1) / stride; }
    // One past the last output index i < outputs with i * stride + offset < size (at least first_inside).
    static int end_inside(int offset, int stride, int size, int outputs) {
        const int64_t last = static_cast<int64_t>(size) - 1 - offset;  // i * stride <= last
        const int64_t count = last < 0 ? 0 : last / stride + 1;
        return static_cast<int>(std::max<int64_t>(first_inside(offset, stride), std::min<int64_t>(count, outputs)));
    }

    int in_c_, in_h_, in_w_, out_c_, out_h_, out_w_, groups_, kernel_h_, kernel_w_, stride_h_, stride_w_;
    int dilation_h_, dilation_w_, pad_top_, pad_left_;
    const float* weights_ = nullptr;
    const float* bias_ = nullptr;
};

std::unique_ptr<Operator> make_float_conv(const Attributes& attrs, BuildContext& context) {
    return std::make_unique<FloatConv>(attrs, context);
}

}  // namespace

EDGE_REGISTER_OP("float_conv", make_float_conv);

}  // namespace edge
