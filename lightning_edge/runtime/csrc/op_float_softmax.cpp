// float_softmax: Softmax or LogSoftmax over the middle axis of (outer, axis, inner), as reference.softmax
// computes it: in float64, shifted = x - max, total = sum(exp(shifted)), exp(shifted) / total or
// shifted - log(total), each result rounded to float32 once.
#include "float_math.h"
#include "float_region.h"
#include "op_registry.h"

namespace edge {

namespace {

class FloatSoftmax final : public Operator {
  public:
    FloatSoftmax(const Attributes& attrs, BuildContext& context) {
        outer_ = attrs.get_int("outer"), axis_ = attrs.get_int("axis"), inner_ = attrs.get_int("inner");
        log_ = attrs.get_int("log") != 0;
        const size_t elements = element_count({outer_, axis_, inner_}, "float_softmax");
        tensors_.inputs = {context.tensor_index(attrs, "input", f32_bytes(elements))};
        tensors_.output = context.tensor_index(attrs, "output", f32_bytes(elements));
    }

    void run(const ExecutionContext& context) const override {
        const float* in = reinterpret_cast<const float*>(context.tensor(tensors_.inputs[0]));
        float* out = reinterpret_cast<float*>(context.tensor(tensors_.output));
        const int axis = axis_, inner = inner_;
        const bool log = log_;
        context.scheduler.parallel(context.batch * outer_, 1, [&](int begin, int end, int) {
            for (int row = begin; row < end; ++row)  // (sample, outer index): axis x inner values
                for (int i = 0; i < inner; ++i) {
                    const float* x = in + static_cast<int64_t>(row) * axis * inner + i;
                    float* y = out + static_cast<int64_t>(row) * axis * inner + i;
                    double top = x[0];
                    for (int a = 1; a < axis; ++a) top = maximum(top, static_cast<double>(x[static_cast<int64_t>(a) * inner]));
                    double total = 0;
                    for (int a = 0; a < axis; ++a) total += std::exp(static_cast<double>(x[static_cast<int64_t>(a) * inner]) - top);
                    const double log_total = std::log(total);
                    for (int a = 0; a < axis; ++a) {
                        const double shifted = static_cast<double>(x[static_cast<int64_t>(a) * inner]) - top;
                        y[static_cast<int64_t>(a) * inner] = static_cast<float>(log ? shifted - log_total : std::exp(shifted) / total);
                    }
                }
        });
    }

  private:
    int outer_, axis_, inner_;
    bool log_;
};

std::unique_ptr<Operator> make_float_softmax(const Attributes& attrs, BuildContext& context) {
    return std::make_unique<FloatSoftmax>(attrs, context);
}

}  // namespace

EDGE_REGISTER_OP("float_softmax", make_float_softmax);

}  // namespace edge
