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
    FloatConv(const Attributes& attrs, BuildContext& context) : g_(attrs, "float_conv") {
        weights_ = context.array<float>(attrs, "weights",
                                        element_count({g_.out_c, g_.in_c / g_.groups, g_.kernel_h, g_.kernel_w}, "float_conv"));
        if (attrs.has("bias")) bias_ = context.array<float>(attrs, "bias", static_cast<size_t>(g_.out_c));
        tensors_.inputs = {context.tensor_index(attrs, "input", f32_bytes(element_count({g_.in_c, g_.in_h, g_.in_w}, "float_conv")))};
        tensors_.output = context.tensor_index(attrs, "output", f32_bytes(element_count({g_.out_c, g_.out_h, g_.out_w}, "float_conv")));
        context.need_scratch(static_cast<size_t>(g_.out_h) * g_.out_w * sizeof(double));
    }

    void run(const ExecutionContext& context) const override {
        const float* in = reinterpret_cast<const float*>(context.tensor(tensors_.inputs[0]));
        float* out = reinterpret_cast<float*>(context.tensor(tensors_.output));
        context.scheduler.parallel(context.batch * g_.out_c, 1, [&](int begin, int end, int thread) {
            double* acc = static_cast<double*>(context.scratch(thread));
            for (int unit = begin; unit < end; ++unit) plane(in, out, unit / g_.out_c, unit % g_.out_c, acc);
        });
    }

  private:
    // Output channel `o` of sample `n`, accumulated in `acc` (out_h * out_w float64).
    void plane(const float* in, float* out, int n, int o, double* acc) const {
        const int per_group = g_.in_c / g_.groups, group = o / (g_.out_c / g_.groups);
        const size_t pixels = static_cast<size_t>(g_.out_h) * g_.out_w, in_plane = static_cast<size_t>(g_.in_h) * g_.in_w;
        std::fill(acc, acc + pixels, bias_ ? static_cast<double>(bias_[o]) : 0.0);
        const float* w = weights_ + static_cast<size_t>(o) * per_group * g_.kernel_h * g_.kernel_w;
        for (int ci = 0; ci < per_group; ++ci) {
            const float* x = in + (static_cast<size_t>(n) * g_.in_c + static_cast<size_t>(group) * per_group + ci) * in_plane;
            for (int a = 0; a < g_.kernel_h; ++a)
                for (int b = 0; b < g_.kernel_w; ++b) {
                    const double weight = *w++;
                    const int dy = a * g_.dilation_h - g_.pad_top, dx = b * g_.dilation_w - g_.pad_left;
                    const int x_begin = first_inside(dx, g_.stride_w), x_end = end_inside(dx, g_.stride_w, g_.in_w, g_.out_w);
                    const int y_begin = first_inside(dy, g_.stride_h), y_end = end_inside(dy, g_.stride_h, g_.in_h, g_.out_h);
                    for (int y = y_begin; y < y_end; ++y) {
                        const float* row = x + static_cast<size_t>(y * g_.stride_h + dy) * g_.in_w;
                        double* target = acc + static_cast<size_t>(y) * g_.out_w;
                        if (g_.stride_w == 1)
                            for (int i = x_begin; i < x_end; ++i) target[i] += weight * static_cast<double>(row[i + dx]);
                        else
                            for (int i = x_begin; i < x_end; ++i)
                                target[i] += weight * static_cast<double>(row[static_cast<int64_t>(i) * g_.stride_w + dx]);
                    }
                }
        }
        float* result = out + (static_cast<size_t>(n) * g_.out_c + o) * pixels;
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

    const FloatConvGeometry g_;

    const float* weights_ = nullptr;
    const float* bias_ = nullptr;
};

std::unique_ptr<Operator> make_float_conv(const Attributes& attrs, BuildContext& context) {
    return std::make_unique<FloatConv>(attrs, context);
}

}  // namespace

EDGE_REGISTER_OP("float_conv", make_float_conv);

}  // namespace edge
