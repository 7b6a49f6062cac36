// add: the elementwise sum of two uint8 tensors on their own grids, requantized onto the output grid
// (a residual add the compiler could not fold into the conv before it).
#include "op_registry.h"

namespace edge {

namespace {

class Add final : public Operator {
  public:
    Add(const Attributes& attrs, BuildContext& context) {
        const int size = attrs.get_int("size");
        check_positive({size}, "add");
        tensors_.inputs = {context.tensor_index(attrs, "input", size), context.tensor_index(attrs, "skip", size)};
        a_ = attrs.get_grid("input_grid"), b_ = attrs.get_grid("skip_grid"), out_ = attrs.get_grid("output_grid");
        tensors_.output = context.tensor_index(attrs, "output", size);
    }

    void run(const ExecutionContext& context) const override {
        const uint8_t* a = context.tensor(tensors_.inputs[0]);
        const uint8_t* b = context.tensor(tensors_.inputs[1]);
        uint8_t* out = context.tensor(tensors_.output);
        const size_t size = context.tensor_size(tensors_.output) * context.batch;
        const Grid ga = a_, gb = b_, go = out_;  // locals: the uint8 stores may not alias them
        for (size_t i = 0; i < size; ++i) {
            const float sum = static_cast<float>(a[i] - ga.zero) * ga.scale + static_cast<float>(b[i] - gb.zero) * gb.scale;
            out[i] = static_cast<uint8_t>(round_onto_grid(sum / go.scale, go.zero, go.low, go.high));
        }
    }

  private:
    Grid a_{}, b_{}, out_{};
};

std::unique_ptr<Operator> make_add(const Attributes& attrs, BuildContext& context) {
    return std::make_unique<Add>(attrs, context);
}

}  // namespace

EDGE_REGISTER_OP("add", make_add);

}  // namespace edge
