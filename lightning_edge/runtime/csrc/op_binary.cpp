// binary: out = Q(a op b) for op in add, sub, mul, div, with numpy broadcasting over (height, width, channels)
// (the squeeze-excitation product (N,1,1,C) x (N,H,W,C), a broadcast add). Each operand's codes become float32
// through its table (its dequantization, or a unary float function of it), the operation is one float32
// operation, and the result is quantized by a float32 division, as INT8_SPEC rule 12 words it.
#include "op_registry.h"

namespace edge {

namespace {

enum class Operation { Add, Sub, Mul, Div };

Operation parse_operation(const std::string& name) {
    if (name == "add") return Operation::Add;
    if (name == "sub") return Operation::Sub;
    if (name == "mul") return Operation::Mul;
    if (name == "div") return Operation::Div;
    throw std::invalid_argument("binary: unknown operation '" + name + "'");
}

// One operand: its broadcast shape, strides in its NHWC storage (0 along broadcast axes) and float table.
struct Operand {
    int height, width, channels, tables;
    const float* table;
    size_t per_sample() const { return static_cast<size_t>(height) * width * channels; }
};

template <Operation op>
inline float apply(float a, float b) {
    if constexpr (op == Operation::Add) return a + b;
    if constexpr (op == Operation::Sub) return a - b;
    if constexpr (op == Operation::Mul) return a * b;
    return a / b;
}

class Binary final : public Operator {
  public:
    Binary(const Attributes& attrs, BuildContext& context) {
        operation_ = parse_operation(attrs.get_string("operation"));
        height_ = attrs.get_int("height"), width_ = attrs.get_int("width"), channels_ = attrs.get_int("channels");
        check_positive({height_, width_, channels_}, "binary");
        a_ = operand(attrs, context, "input"), b_ = operand(attrs, context, "other");
        out_ = attrs.get_grid("output_grid");
        tensors_.inputs = {context.tensor_index(attrs, "input", a_.per_sample()), context.tensor_index(attrs, "other", b_.per_sample())};
        tensors_.output = context.tensor_index(attrs, "output", static_cast<size_t>(height_) * width_ * channels_);
    }

    void run(const ExecutionContext& context) const override {
        switch (operation_) {
            case Operation::Add: return run_as<Operation::Add>(context);
            case Operation::Sub: return run_as<Operation::Sub>(context);
            case Operation::Mul: return run_as<Operation::Mul>(context);
            case Operation::Div: return run_as<Operation::Div>(context);
        }
    }

  private:
    Operand operand(const Attributes& attrs, BuildContext& context, const std::string& name) const {
        const std::string shape = name + "_shape";
        Operand o{attrs.get_int((shape + ".0").c_str()), attrs.get_int((shape + ".1").c_str()),
                  attrs.get_int((shape + ".2").c_str()), 0, nullptr};
        if ((o.height != 1 && o.height != height_) || (o.width != 1 && o.width != width_) ||
            (o.channels != 1 && o.channels != channels_))
            throw std::invalid_argument("binary: operand '" + name + "' does not broadcast to the output");
        o.tables = attrs.get_int((name + "_table_count").c_str());
        if (o.tables != 1 && o.tables != o.channels) throw std::invalid_argument("binary: '" + name + "' table count");
        o.table = context.array<float>(attrs, (name + "_table").c_str(), static_cast<size_t>(o.tables) * 256);
        return o;
    }

    template <Operation op>
    void run_as(const ExecutionContext& context) const {
        const uint8_t* a = context.tensor(tensors_.inputs[0]);
        const uint8_t* b = context.tensor(tensors_.inputs[1]);
        uint8_t* out = context.tensor(tensors_.output);
        const Operand oa = a_, ob = b_;
        const Grid grid = out_;
        const int height = height_, width = width_, channels = channels_;
        context.scheduler.parallel(context.batch * height * width, 16, [&](int begin, int end, int) {
            for (int pixel = begin; pixel < end; ++pixel) {
                const int n = pixel / (height * width), y = pixel / width % height, x = pixel % width;
                const uint8_t* pa = a + n * oa.per_sample() + (static_cast<size_t>(oa.height == 1 ? 0 : y) * oa.width + (oa.width == 1 ? 0 : x)) * oa.channels;
                const uint8_t* pb = b + n * ob.per_sample() + (static_cast<size_t>(ob.height == 1 ? 0 : y) * ob.width + (ob.width == 1 ? 0 : x)) * ob.channels;
                uint8_t* po = out + static_cast<size_t>(pixel) * channels;
                for (int c = 0; c < channels; ++c) {
                    const int ca = oa.channels == 1 ? 0 : c, cb = ob.channels == 1 ? 0 : c;
                    const float va = oa.table[(oa.tables == 1 ? 0 : ca) * 256 + pa[ca]];
                    const float vb = ob.table[(ob.tables == 1 ? 0 : cb) * 256 + pb[cb]];
                    po[c] = static_cast<uint8_t>(round_onto_grid(apply<op>(va, vb) / grid.scale, grid.zero, grid.low, grid.high));
                }
            }
        });
    }

    Operation operation_;
    int height_, width_, channels_;
    Operand a_{}, b_{};
    Grid out_{};
};

std::unique_ptr<Operator> make_binary(const Attributes& attrs, BuildContext& context) {
    return std::make_unique<Binary>(attrs, context);
}

}  // namespace

EDGE_REGISTER_OP("binary", make_binary);

}  // namespace edge
