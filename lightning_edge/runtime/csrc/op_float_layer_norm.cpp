// float_layer_norm: LayerNormalization over rows of `inner` elements, as reference.layer_normalization
// computes it in float64: mean, variance = mean((x - mean)^2), inverse = 1 / sqrt(variance + epsilon) (epsilon
// the float32 field widened), y = (x - mean) * inverse * scale (+ bias), rounded to float32 once.
#include "float_region.h"
#include "op_registry.h"

namespace edge {

namespace {

class FloatLayerNorm final : public Operator {
  public:
    FloatLayerNorm(const Attributes& attrs, BuildContext& context) {
        outer_ = attrs.get_int("outer"), inner_ = attrs.get_int("inner");
        const size_t elements = element_count({outer_, inner_}, "float_layer_norm");
        epsilon_ = static_cast<double>(attrs.get_float("epsilon"));
        scale_ = context.array<float>(attrs, "scale", inner_);
        bias_ = attrs.has("bias") ? context.array<float>(attrs, "bias", inner_) : nullptr;
        tensors_.inputs = {context.tensor_index(attrs, "input", f32_bytes(elements))};
        tensors_.output = context.tensor_index(attrs, "output", f32_bytes(elements));
    }

    void run(const ExecutionContext& context) const override {
        const float* in = reinterpret_cast<const float*>(context.tensor(tensors_.inputs[0]));
        float* out = reinterpret_cast<float*>(context.tensor(tensors_.output));
        const int inner = inner_;
        context.scheduler.parallel(context.batch * outer_, 1, [&](int begin, int end, int) {
            for (int row = begin; row < end; ++row) {
                const float* x = in + static_cast<int64_t>(row) * inner;
                float* y = out + static_cast<int64_t>(row) * inner;
                double sum = 0;
                for (int j = 0; j < inner; ++j) sum += x[j];
                const double mean = sum / inner;
                double squares = 0;
                for (int j = 0; j < inner; ++j) {
                    const double centred = x[j] - mean;
                    squares += centred * centred;
                }
                const double inverse = 1.0 / std::sqrt(squares / inner + epsilon_);
                for (int j = 0; j < inner; ++j) {
                    double v = (x[j] - mean) * inverse * static_cast<double>(scale_[j]);
                    if (bias_) v = v + static_cast<double>(bias_[j]);
                    y[j] = static_cast<float>(v);
                }
            }
        });
    }

  private:
    int outer_, inner_;
    double epsilon_;
    const float* scale_;
    const float* bias_;
};

std::unique_ptr<Operator> make_float_layer_norm(const Attributes& attrs, BuildContext& context) {
    return std::make_unique<FloatLayerNorm>(attrs, context);
}

}  // namespace

EDGE_REGISTER_OP("float_layer_norm", make_float_layer_norm);

}  // namespace edge
