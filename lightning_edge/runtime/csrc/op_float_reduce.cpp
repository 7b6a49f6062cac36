// float_reduce: ReduceMean / ReduceSum (float64 sums, the mean divided by the reduced count, rounded to
// float32 once) and ReduceMax / ReduceMin (exact, NaN-propagating as numpy's) over `axes` of an input of
// `shape`. The output is in row-major order of the kept axes (keepdims only inserts 1s: the same order).
#include <array>

#include "float_math.h"
#include "float_region.h"
#include "op_registry.h"

namespace edge {

namespace {

enum class Operation { Mean, Sum, Max, Min };

Operation parse_operation(const std::string& name) {
    if (name == "mean") return Operation::Mean;
    if (name == "sum") return Operation::Sum;
    if (name == "max") return Operation::Max;
    if (name == "min") return Operation::Min;
    throw std::invalid_argument("float_reduce: unknown operation '" + name + "'");
}

constexpr int kMaxRank = 6;

// Axes walked in row-major order: extents and element strides in the input, with an odometer over them.
struct Axes {
    int rank = 0;
    std::array<int, kMaxRank> extent{}, index{};
    std::array<int64_t, kMaxRank> stride{};
    int64_t offset = 0;

    // Moves to the next position; false after the last one (then back at the first).
    bool advance() {
        for (int d = rank - 1; d >= 0; --d) {
            offset += stride[d];
            if (++index[d] < extent[d]) return true;
            offset -= extent[d] * stride[d];
            index[d] = 0;
        }
        return false;
    }
};

class FloatReduce final : public Operator {
  public:
    FloatReduce(const Attributes& attrs, BuildContext& context) {
        operation_ = parse_operation(attrs.get_string("operation"));
        const std::vector<int> shape = int_list(attrs, "shape", 1, kMaxRank, "float_reduce");
        const int rank = static_cast<int>(shape.size());
        input_size_ = element_count(shape, "float_reduce");
        std::array<bool, kMaxRank> reduced{};
        for (int axis : int_list(attrs, "axes", 1, kMaxRank, "float_reduce")) {
            if (axis < 0 || axis >= rank || reduced[axis])
                throw std::invalid_argument("float_reduce: axis " + std::to_string(axis) + " is out of range or repeated");
            reduced[axis] = true;
        }
        int64_t stride = 1;
        for (int d = rank - 1; d >= 0; --d) {  // the input's row-major strides, split between kept and reduced
            Axes& axes = reduced[d] ? reduced_ : kept_;
            axes.extent[axes.rank] = shape[d], axes.stride[axes.rank] = stride, ++axes.rank;
            stride *= shape[d];
        }
        std::reverse(kept_.extent.begin(), kept_.extent.begin() + kept_.rank);
        std::reverse(kept_.stride.begin(), kept_.stride.begin() + kept_.rank);
        std::reverse(reduced_.extent.begin(), reduced_.extent.begin() + reduced_.rank);
        std::reverse(reduced_.stride.begin(), reduced_.stride.begin() + reduced_.rank);
        count_ = 1;
        for (int d = 0; d < reduced_.rank; ++d) count_ *= reduced_.extent[d];
        output_size_ = input_size_ / count_;
        tensors_.inputs = {context.tensor_index(attrs, "input", f32_bytes(input_size_))};
        tensors_.output = context.tensor_index(attrs, "output", f32_bytes(output_size_));
    }

    void run(const ExecutionContext& context) const override {
        const float* in = reinterpret_cast<const float*>(context.tensor(tensors_.inputs[0]));
        float* out = reinterpret_cast<float*>(context.tensor(tensors_.output));
        const int64_t outputs = static_cast<int64_t>(output_size_);
        context.scheduler.parallel(static_cast<int>(context.batch * outputs), 16, [&](int begin, int end, int) {
            Axes kept = kept_;  // at output element `begin`: divisions once per share
            int64_t rest = begin % outputs;
            for (int d = kept.rank - 1; d >= 0; --d) {
                kept.index[d] = static_cast<int>(rest % kept.extent[d]);
                rest /= kept.extent[d];
                kept.offset += kept.index[d] * kept.stride[d];
            }
            int sample = static_cast<int>(begin / outputs);
            for (int o = begin; o < end; ++o) {
                out[o] = reduce(in + static_cast<int64_t>(sample) * input_size_ + kept.offset);
                if (!kept.advance()) ++sample;
            }
        });
    }

  private:
    // The reduction of the elements at `base` + every reduced-axes offset.
    float reduce(const float* base) const {
        Axes walk = reduced_;
        if (operation_ == Operation::Max || operation_ == Operation::Min) {
            float best = base[0];
            const bool max = operation_ == Operation::Max;
            while (walk.advance()) best = max ? maximum(best, base[walk.offset]) : minimum(best, base[walk.offset]);
            return best;
        }
        double total = 0;
        do total += static_cast<double>(base[walk.offset]);
        while (walk.advance());
        return static_cast<float>(operation_ == Operation::Mean ? total / static_cast<double>(count_) : total);
    }

    Operation operation_;
    Axes kept_, reduced_;
    size_t input_size_, output_size_, count_;
};

std::unique_ptr<Operator> make_float_reduce(const Attributes& attrs, BuildContext& context) {
    return std::make_unique<FloatReduce>(attrs, context);
}

}  // namespace

EDGE_REGISTER_OP("float_reduce", make_float_reduce);

}  // namespace edge
