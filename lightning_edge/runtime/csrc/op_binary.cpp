// binary: out = Q(a op b) for op in add, sub, mul, div, with numpy broadcasting over (height, width, channels)
// (the squeeze-excitation product (N,1,1,C) x (N,H,W,C), a broadcast add). Each operand's codes become float32
// through its table (its dequantization, or a unary float function of it), the operation is one float32
// operation, and the result is quantized by a float32 division, as INT8_SPEC rule 12 words it. On the
// avx512 path the squeeze-excitation shape runs through binary.h's row kernel.
#include <cstring>

#include "binary.h"
#include "op_registry.h"

namespace edge {

namespace {

using Operation = BinaryOperation;

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
        const bool gated = per_channel(b_, a_) || per_channel(a_, b_);
        scale_is_b_ = per_channel(b_, a_);
        if (gated && std::strcmp(context.backend().name, "avx512") == 0) gated_row_ = gated_row_avx512();
        by_code_ = !gated_row_ && height_ * width_ >= 256 && gated;
        if (by_code_) context.need_workspace(static_cast<size_t>(channels_) * 256);  // run_by_code's tables, per image
        if (gated_row_) context.need_workspace(static_cast<size_t>(channels_) * sizeof(float));  // the gates, per image
        const Operand& full = scale_is_b_ ? a_ : b_;
        affine_ = gated_row_ && full.tables == 1 && affine_table(full.table, affine_zero_, affine_scale_);
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

    // Whether `o` is one value per (image, channel) (the squeeze-excitation scale) beside a full other operand.
    bool per_channel(const Operand& o, const Operand& other) const {
        return o.height == 1 && o.width == 1 && o.channels == channels_ && other.height == height_ &&
               other.width == width_ && other.channels == channels_;
    }

    // out = Q(a op b) where one operand is constant per (image, channel): for each image and channel the
    // output is a function of the other operand's code alone, so its 256 values are computed first (the very
    // float operations of the elementwise loop) and every pixel is one byte lookup. Pays where an image has
    // more pixels than a code has values.
    template <Operation op>
    void run_by_code(const ExecutionContext& context, const uint8_t* a, const uint8_t* b, uint8_t* out, bool b_is_scale) const {
        const Operand full = b_is_scale ? a_ : b_, scale = b_is_scale ? b_ : a_;
        const uint8_t* codes = b_is_scale ? a : b;
        const uint8_t* scales = b_is_scale ? b : a;
        const int channels = channels_, pixels = height_ * width_;
        uint8_t* tables = static_cast<uint8_t*>(context.workspace());  // [image][channel][code]
        const Grid grid = out_;
        context.scheduler.parallel(context.batch * channels, 8, [&](int begin, int end, int) {
            for (int index = begin; index < end; ++index) {
                const int n = index / channels, c = index % channels;
                const float fixed = scale.table[(scale.tables == 1 ? 0 : c) * 256 + scales[static_cast<size_t>(n) * channels + c]];
                const float* table = full.table + (full.tables == 1 ? 0 : c) * 256;
                uint8_t* row = tables + static_cast<size_t>(index) * 256;
                for (int q = 0; q < 256; ++q) {
                    const float v = b_is_scale ? apply<op>(table[q], fixed) : apply<op>(fixed, table[q]);
                    row[q] = static_cast<uint8_t>(round_onto_grid(v / grid.scale, grid.zero, grid.low, grid.high));
                }
            }
        });
        context.scheduler.parallel(context.batch * pixels, 16, [&](int begin, int end, int) {
            for (int pixel = begin; pixel < end; ++pixel) {
                const uint8_t* table = tables + static_cast<size_t>(pixel / pixels) * channels * 256;
                const uint8_t* in = codes + static_cast<size_t>(pixel) * channels;
                uint8_t* po = out + static_cast<size_t>(pixel) * channels;
                for (int c = 0; c < channels; ++c) po[c] = table[c * 256 + in[c]];
            }
        });
    }

    // The same products through the row kernel: each image's gates as floats first, then per pixel one row.
    void run_gated(const ExecutionContext& context, const uint8_t* a, const uint8_t* b, uint8_t* out) const {
        const Operand full = scale_is_b_ ? a_ : b_, scale = scale_is_b_ ? b_ : a_;
        const uint8_t* codes = scale_is_b_ ? a : b;
        const uint8_t* scales = scale_is_b_ ? b : a;
        const int channels = channels_, pixels = height_ * width_;
        float* gates = static_cast<float*>(context.workspace());  // [image][channel]
        for (int index = 0; index < context.batch * channels; ++index)
            gates[index] = scale.table[(scale.tables == 1 ? 0 : index % channels) * 256 + scales[index]];
        GatedRow row{full.table, full.tables != 1, !scale_is_b_, affine_, affine_zero_, affine_scale_, nullptr, channels, out_};
        context.scheduler.parallel(context.batch * pixels, 16, [&](int begin, int end, int) {
            GatedRow mine = row;
            for (int pixel = begin; pixel < end; ++pixel) {
                mine.gate = gates + static_cast<size_t>(pixel / pixels) * channels;
                gated_row_(operation_, mine, codes + static_cast<size_t>(pixel) * channels, out + static_cast<size_t>(pixel) * channels);
            }
        });
    }

    template <Operation op>
    void run_as(const ExecutionContext& context) const {
        const uint8_t* a = context.tensor(tensors_.inputs[0]);
        const uint8_t* b = context.tensor(tensors_.inputs[1]);
        uint8_t* out = context.tensor(tensors_.output);
        if (gated_row_) return run_gated(context, a, b, out);
        if (by_code_) return run_by_code<op>(context, a, b, out, scale_is_b_);
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
    bool by_code_ = false;     // one operand is constant per (image, channel) and an image has >= 256 pixels
    bool scale_is_b_ = false;  // that operand is b
    GatedRowKernel gated_row_ = nullptr;  // the squeeze-excitation shape's row kernel, where the path has one
    bool affine_ = false;  // the full operand's one table is a dequantization (binary.h)
    int affine_zero_ = 0;
    float affine_scale_ = 0.0f;
};

std::unique_ptr<Operator> make_binary(const Attributes& attrs, BuildContext& context) {
    return std::make_unique<Binary>(attrs, context);
}

}  // namespace

EDGE_REGISTER_OP("binary", make_binary);

}  // namespace edge
