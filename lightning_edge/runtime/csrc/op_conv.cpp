// conv: a convolution or linear layer with its requantizing epilogue, optionally a residual add folded in.
// Three layouts: int16 pairs (direct GEMM, every path), Winograd F(2x2, 3x3) on the same int16 input, and
// the u8 x s8 quads layout of AVX-512 VNNI. The input is widened once per layer into the shared workspace.
#include "conv_driver.h"
#include "op_registry.h"

namespace edge {

namespace {

class Conv final : public Operator {
  public:
    Conv(const Attributes& attrs, BuildContext& context) {
        ConvOp& c = conv_;
        c.in_h = attrs.get_int("in_h"), c.in_w = attrs.get_int("in_w"), c.in_c = attrs.get_int("in_c");
        c.out_h = attrs.get_int("out_h"), c.out_w = attrs.get_int("out_w"), c.out_c = attrs.get_int("out_c");
        assign_window(c, read_window(attrs, "conv"));
        c.groups = attrs.get_int("groups"), c.block = attrs.get_int("block");
        check_positive({c.in_h, c.in_w, c.in_c, c.out_h, c.out_w, c.out_c, c.groups}, "conv");
        if (c.in_c % c.groups || c.out_c % c.groups) throw std::invalid_argument("conv: channels do not divide into groups");
        const bool has_layout = attrs.has("layout");
        if (c.block != 8 && c.block != 16 && !(c.block == 32 && has_layout))
            throw std::invalid_argument("conv: block must be 8 or 16 (32 in the quads layout)");
        if ((c.out_h - 1) * static_cast<long>(c.stride_h) - c.pad_top + c.kernel_h > c.in_h + c.kernel_h ||
            (c.out_w - 1) * static_cast<long>(c.stride_w) - c.pad_left + c.kernel_w > c.in_w + c.kernel_w)
            throw std::invalid_argument("conv: output size does not fit the input");
        if (static_cast<long>(c.out_h) * c.out_w * c.out_c > (1L << 30) || static_cast<long>(c.in_h) * c.in_w * c.in_c > (1L << 30))
            throw std::invalid_argument("conv: tensor too large");
        c.quads = has_layout && attrs.get_string("layout") == "quads";
        if (c.quads && !context.backend().conv8) throw std::invalid_argument("conv: the quads layout needs kernels='avx512'");
        c.winograd = attrs.has("algorithm") && attrs.get_string("algorithm") == "winograd";
        if (c.winograd && c.quads) throw std::invalid_argument("conv: Winograd runs on the int16 layout");
        if (c.winograd && (c.kernel_h != 3 || c.kernel_w != 3 || c.stride_h != 1 || c.stride_w != 1))
            throw std::invalid_argument("conv: Winograd needs a 3x3 kernel with stride 1");
        // A layer whose bias takes acc + bias beyond int32 (the accumulator alone stays inside) runs the scalar
        // kernels, whose epilogue adds the bias in int64 (INT8_SPEC rule 5: the sum is exact).
        wide_ = attrs.has("wide_bias") && attrs.get_int("wide_bias") != 0;
        if (wide_ && (c.quads || c.winograd)) throw std::invalid_argument("conv: a wide bias runs on the int16 layout");
        c.sparse = attrs.has("algorithm") && attrs.get_string("algorithm") == "sparse";
        if (c.sparse && wide_) throw std::invalid_argument("conv: a wide bias runs the dense scalar kernels");
        size_t weight_count = derive_conv_fields(c);
        if (c.sparse) weight_count = read_steps(attrs, context);
        if (c.winograd) context.need_scratch(winograd_scratch_bytes(c));
        if (c.quads) c.weights8 = context.array<int8_t>(attrs, "weights", weight_count);
        else c.weights = context.array<int16_t>(attrs, "weights", weight_count);
        c.bias = context.array<int32_t>(attrs, "bias", c.out_c);
        c.multiplier = context.array<float>(attrs, "multiplier", c.out_c);
        const Grid in = attrs.get_grid("input_grid"), out = attrs.get_grid("output_grid");
        c.input_zero = in.zero, c.output_zero = out.zero, c.low = out.low, c.high = out.high;
        tensors_.inputs = {context.tensor_index(attrs, "input", static_cast<size_t>(c.in_h) * c.in_w * c.in_c)};
        const size_t out_size = static_cast<size_t>(c.out_h) * c.out_w * c.out_c;
        c.residual = attrs.has("skip");
        if (c.residual) {
            tensors_.inputs.push_back(context.tensor_index(attrs, "skip", out_size));
            const Grid skip = attrs.get_grid("skip_grid"), sum = attrs.get_grid("sum_grid");
            c.conv_scale = out.scale, c.skip_scale = skip.scale, c.sum_scale = sum.scale;
            c.skip_zero = skip.zero, c.sum_zero = sum.zero, c.sum_low = sum.low, c.sum_high = sum.high;
        }
        tensors_.output = context.tensor_index(attrs, "output", out_size);
        if (!reads_input_in_place(c)) context.need_workspace(wide_elements(c, 1) * sizeof(int16_t));
    }

    void run(const ExecutionContext& context) const override {
        const ConvOp& c = conv_;
        const Backend& backend = wide_ ? scalar_backend() : context.backend;
        Scheduler& scheduler = context.scheduler;
        const uint8_t* in = context.tensor(tensors_.inputs[0]);
        const uint8_t* skip = c.residual ? context.tensor(tensors_.inputs[1]) : nullptr;
        uint8_t* out = context.tensor(tensors_.output);
        const int batch = context.batch;
        const int pixels = batch * c.out_h * c.out_w;
        const int columns = c.groups * c.blocks;
        if (c.quads) {
            const uint8_t* codes = in;  // a 1x1 conv over whole quads of channels reads its input as it is
            if (!reads_input_in_place(c)) {
                uint8_t* bordered = static_cast<uint8_t*>(context.workspace());
                scheduler.parallel(batch * c.wide_h, 8, [&](int begin, int end, int) { widen_rows_u8(c, in, bordered, begin, end); });
                codes = bordered;
            }
            scheduler.split_conv(pixels, kQuadTilePixels, columns, [&](Range range) { backend.conv8(c, codes, skip, out, range); });
            return;
        }
        int16_t* wide = static_cast<int16_t*>(context.workspace());
        scheduler.parallel(batch * c.wide_h, 8, [&](int begin, int end, int) { backend.widen(c, in, wide, begin, end); });
        if (c.winograd) {
            scheduler.parallel(batch * c.tiles_h * c.tiles_w, 1, [&](int begin, int end, int t) {
                backend.winograd(c, wide, skip, out, begin, end, context.scratch(t));
            });
            return;
        }
        scheduler.split_conv(pixels, kTilePixels, columns, [&](Range range) { backend.conv(c, wide, skip, out, range); });
    }

    // A 1x1 stride-1 conv on the int16 pairs layout (dense or sparse) runs on any rows of its input. (The u8 x s8
    // quads layout is not fused yet: its fused blocks have not been measured on a VNNI CPU.)
    const ConvOp* fusable_conv() const override {
        const ConvOp& c = conv_;
        const bool pointwise = c.taps == 1 && c.stride_h == 1 && c.stride_w == 1 && c.pad_top == 0 && c.pad_left == 0;
        return pointwise && !wide_ && !c.winograd && !c.quads ? &conv_ : nullptr;
    }

  private:
    // The sparse layout's step lists (kernels.h): step_starts [columns + 1] rising from 0, and each step's index
    // tap * depth groups + group, checked and turned into offsets into a pixel's window. Returns the packed
    // weight count.
    size_t read_steps(const Attributes& attrs, BuildContext& context) {
        ConvOp& c = conv_;
        const int columns = c.groups * c.blocks, depth_groups = c.group_in_padded / conv_depth_group(c);
        c.step_starts = context.array<int32_t>(attrs, "step_starts", static_cast<size_t>(columns) + 1);
        const long max_steps = static_cast<long>(c.taps) * depth_groups;
        for (int k = 0; k < columns; ++k)
            if (c.step_starts[k] < 0 || c.step_starts[k + 1] < c.step_starts[k] || c.step_starts[k + 1] - c.step_starts[k] > max_steps ||
                (k == 0 && c.step_starts[0] != 0))
                throw std::invalid_argument("conv: step_starts must rise from 0 by at most taps * depth groups per column");
        const size_t total = static_cast<size_t>(c.step_starts[columns]);
        const int32_t* steps = context.array<int32_t>(attrs, "steps", total);
        step_offsets_.resize(total);
        for (size_t i = 0; i < total; ++i) {
            if (steps[i] < 0 || steps[i] >= max_steps) throw std::invalid_argument("conv: a sparse step is outside the window");
            const int tap = steps[i] / depth_groups, group = steps[i] % depth_groups;
            step_offsets_[i] = (static_cast<size_t>(tap / c.kernel_w) * c.wide_w + tap % c.kernel_w) * c.wide_c +
                               static_cast<size_t>(group) * conv_depth_group(c);
        }
        c.step_offsets = step_offsets_.data();
        return total * conv_depth_group(c) * c.block;
    }

    std::vector<size_t> step_offsets_;
    bool wide_ = false;
    ConvOp conv_{};
};

std::unique_ptr<Operator> make_conv(const Attributes& attrs, BuildContext& context) {
    return std::make_unique<Conv>(attrs, context);
}

}  // namespace

EDGE_REGISTER_OP("conv", make_conv);

}  // namespace edge
