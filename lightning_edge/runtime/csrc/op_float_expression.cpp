// float_expression: an elementwise float function of several tensors and constants with numpy broadcasting,
// run as a small register program per output element (INT8_SPEC rule 10: every arithmetic step one float32
// operation, transcendentals in float64 from the float32 operand, rounded once). Each step's semantics are
// reference.py's FLOAT_OPS function of the same name, numpy's NaN and signed-zero behaviour included.
//
// The program runs over blocks of kLanes consecutive output elements, one instruction at a time over the
// whole block (a tight loop per step, not a dispatch per element). Operand reads follow each operand's
// strides with an incrementally updated multi-index over (batch, shape...): no division per element.
#include <array>

#include "float_math.h"
#include "float_region.h"
#include "op_registry.h"

namespace edge {

namespace {

// plan.FLOAT_OPCODES, in its order.
enum Opcode : int {
    kInput, kConstant, kAdd, kSub, kMul, kDiv, kMax, kMin, kNeg, kAbs, kRelu, kClip, kLeakyRelu, kPrelu,
    kHardSigmoid, kHardSwish, kSigmoid, kTanh, kExp, kLog, kSqrt, kErf, kPow, kSoftplus, kMish, kGelu,
    kReciprocal, kFloor, kCeil, kOpcodeCount
};

constexpr int kLanes = 64;       // output elements per block
constexpr int kMaxRank = 6;      // of the output shape; the walk adds the batch axis in front
constexpr int kMaxRegisters = 256;

// One step; `a` and `b` are registers (0 where the opcode reads none), `source` the operand a load reads.
struct Instruction {
    int opcode, dst, a, b, source;
    float imm0, imm1;
};

// A tensor input or a constant: where its elements are and the element stride per axis of (batch, shape...).
struct Source {
    const uint8_t* codes = nullptr;  // a u8 input, read through `table`
    const float* table = nullptr;
    const float* values = nullptr;   // a constant; an f32 input's data is bound per run
    int tensor = -1;                 // the input's position in tensors_.inputs, -1 for a constant
    std::array<int64_t, kMaxRank + 1> stride{};
};

// The multi-index over (batch, shape...) of one operand read, and its element offset.
struct Walker {
    std::array<int, kMaxRank + 1> index{};
    int64_t offset = 0;
};

class FloatExpression final : public Operator {
  public:
    FloatExpression(const Attributes& attrs, BuildContext& context) {
        const std::vector<int> shape = int_list(attrs, "shape", 1, kMaxRank, "float_expression");
        const size_t elements = element_count(shape, "float_expression");
        rank_ = static_cast<int>(shape.size()) + 1;
        for (int d = 1; d < rank_; ++d) extent_[d] = shape[d - 1];
        inner_ = static_cast<int>(elements / shape[0]);

        const int inputs = list_count(attrs, "inputs", 0, kMaxRegisters, "float_expression");
        for (int i = 0; i < inputs; ++i) read_input(attrs, context, i);
        const int constants = list_count(attrs, "constants", 0, kMaxRegisters, "float_expression");
        for (int j = 0; j < constants; ++j) read_constant(attrs, context, j);
        constant_count_ = constants;
        read_program(attrs, context);
        tensors_.output = context.tensor_index(attrs, "output", f32_bytes(elements));
        context.need_scratch(static_cast<size_t>(registers_) * kLanes * sizeof(float));
    }

    void run(const ExecutionContext& context) const override {
        std::vector<const uint8_t*> data;
        for (int index : tensors_.inputs) data.push_back(context.tensor(index));
        float* out = reinterpret_cast<float*>(context.tensor(tensors_.output));
        const int units = context.batch * extent_[1];  // (sample, leading index) pairs
        context.scheduler.parallel(units, 1, [&](int begin, int end, int thread) {
            float* registers = static_cast<float*>(context.scratch(thread));
            run_share(data, out, static_cast<int64_t>(begin) * inner_, static_cast<int64_t>(end) * inner_, registers);
        });
    }

  private:
    // Strides of operand `key`, checked: non-negative, every read inside `size` elements (per sample).
    void read_strides(const Attributes& attrs, BuildContext& context, const std::string& key, size_t size, Source& s) {
        const int32_t* strides = context.array<int32_t>(attrs, key.c_str(), rank_ - 1);
        int64_t last = 0;
        for (int d = 1; d < rank_; ++d) {
            if (strides[d - 1] < 0) throw std::invalid_argument("float_expression: '" + key + "' has a negative stride");
            s.stride[d] = strides[d - 1];
            last += static_cast<int64_t>(extent_[d] - 1) * strides[d - 1];
        }
        if (static_cast<uint64_t>(last) >= size)
            throw std::invalid_argument("float_expression: '" + key + "' reads past its " + std::to_string(size) + " elements");
    }

    void read_input(const Attributes& attrs, BuildContext& context, int i) {
        Source s;
        size_t bytes = 0;
        tensors_.inputs.push_back(context.tensor_index_sized(attrs, list_item("inputs", i).c_str(), bytes));
        s.tensor = i;
        const std::string table = list_item("tables", i);
        size_t size = bytes;  // elements per sample: codes, or float32 values
        if (attrs.has(table.c_str())) {
            s.table = context.array<float>(attrs, table.c_str(), 256);
        } else {
            if (bytes % sizeof(float)) throw std::invalid_argument("float_expression: input " + std::to_string(i) + " is not an f32 tensor");
            size = bytes / sizeof(float);
        }
        if (size == 0) throw std::invalid_argument("float_expression: input " + std::to_string(i) + " is empty");
        read_strides(attrs, context, list_item("strides", i), size, s);
        s.stride[0] = static_cast<int64_t>(size);
        sources_.push_back(s);
    }

    void read_constant(const Attributes& attrs, BuildContext& context, int j) {
        Source s;
        const std::string key = list_item("constants", j);
        const size_t size = context.array_count(attrs, key.c_str());
        if (size == 0) throw std::invalid_argument("float_expression: constant " + std::to_string(j) + " is empty");
        s.values = context.array<float>(attrs, key.c_str(), size);
        read_strides(attrs, context, list_item("constant_strides", j), size, s);
        sources_.push_back(s);  // stride[0] stays 0: a constant is the same for every sample
    }

    // The program, checked: opcodes known, registers in range and written before they are read, operand
    // indices in range, the result written.
    void read_program(const Attributes& attrs, BuildContext& context) {
        registers_ = attrs.get_int("registers"), result_ = attrs.get_int("result");
        if (registers_ < 1 || registers_ > kMaxRegisters || result_ < 0 || result_ >= registers_)
            throw std::invalid_argument("float_expression: 'registers' must be 1 to 256 and 'result' one of them");
        const size_t words = context.array_count(attrs, "program");
        if (words == 0 || words % 5 || words / 5 > (1 << 16))
            throw std::invalid_argument("float_expression: 'program' must be (instructions, 5) with 1 to 65536 instructions");
        const size_t count = words / 5;
        const int32_t* program = context.array<int32_t>(attrs, "program", words);
        const float* immediates = context.array<float>(attrs, "immediates", count * 2);
        const int inputs = static_cast<int>(tensors_.inputs.size());
        std::vector<bool> written(registers_, false);
        for (size_t i = 0; i < count; ++i) {
            const int32_t* word = program + i * 5;
            Instruction in{word[0], word[1], word[2], word[3], -1, immediates[2 * i], immediates[2 * i + 1]};
            const std::string where = "float_expression: instruction " + std::to_string(i);
            if (in.opcode < 0 || in.opcode >= kOpcodeCount) throw std::invalid_argument(where + " has an unknown opcode");
            auto check_register = [&](int r) {
                if (r < 0 || r >= registers_ || !written[r])
                    throw std::invalid_argument(where + " reads register " + std::to_string(r) + ", out of range or not yet written");
            };
            if (in.opcode == kInput && (in.a < 0 || in.a >= inputs))
                throw std::invalid_argument(where + " loads input " + std::to_string(in.a) + ", out of range");
            if (in.opcode == kConstant && (in.a < 0 || in.a >= constant_count_))
                throw std::invalid_argument(where + " loads constant " + std::to_string(in.a) + ", out of range");
            const bool load = in.opcode == kInput || in.opcode == kConstant;
            const bool binary = (in.opcode >= kAdd && in.opcode <= kMin) || in.opcode == kPrelu || in.opcode == kPow;
            if (load) in.source = in.opcode == kInput ? in.a : inputs + in.a;
            if (load) in.a = 0; else check_register(in.a);
            if (binary) check_register(in.b); else in.b = 0;
            if (in.opcode == kGelu && in.imm0 != 0.0f && in.imm0 != 1.0f)
                throw std::invalid_argument(where + ": gelu's imm0 must be 0 (erf) or 1 (tanh)");
            if (in.dst < 0 || in.dst >= registers_) throw std::invalid_argument(where + " writes a register out of range");
            written[in.dst] = true;
            program_.push_back(in);
        }
        if (!written[result_]) throw std::invalid_argument("float_expression: no instruction writes the result register");
    }

    // The starting multi-index and offset of source s at flat output element `flat` (divisions once per share).
    Walker start(const Source& s, int64_t flat) const {
        Walker w;
        for (int d = rank_ - 1; d >= 1; --d) {
            w.index[d] = static_cast<int>(flat % extent_[d]);
            flat /= extent_[d];
            w.offset += w.index[d] * s.stride[d];
        }
        w.index[0] = static_cast<int>(flat);
        w.offset += flat * s.stride[0];
        return w;
    }

    // Calls read(lane, offset) for `count` consecutive output elements of source s, advancing its walker.
    template <class Read>
    void walk(const Source& s, Walker& w, int count, Read read) const {
        const int last = rank_ - 1;
        for (int e = 0; e < count; ++e) {
            read(e, w.offset);
            int d = last;
            w.offset += s.stride[d];
            while (++w.index[d] == extent_[d] && d > 0) {  // carry into the next axis out
                w.offset -= extent_[d] * s.stride[d];
                w.index[d] = 0;
                --d;
                w.offset += s.stride[d];
            }
        }
    }

    void run_share(const std::vector<const uint8_t*>& data, float* out, int64_t begin, int64_t end, float* registers) const {
        std::vector<Walker> walkers(program_.size());
        for (size_t i = 0; i < program_.size(); ++i) {
            const Instruction& in = program_[i];
            if (in.source >= 0) walkers[i] = start(sources_[in.source], begin);
        }
        for (int64_t block = begin; block < end; block += kLanes) {
            const int count = static_cast<int>(std::min<int64_t>(kLanes, end - block));
            for (size_t i = 0; i < program_.size(); ++i) execute(program_[i], walkers[i], data, count, registers);
            const float* result = registers + static_cast<size_t>(result_) * kLanes;
            std::copy(result, result + count, out + block);
        }
    }

    void execute(const Instruction& in, Walker& walker, const std::vector<const uint8_t*>& data, int count, float* registers) const {
        float* d = registers + static_cast<size_t>(in.dst) * kLanes;
        const float* x = registers + static_cast<size_t>(in.a) * kLanes;
        const float* y = registers + static_cast<size_t>(in.b) * kLanes;
        const float imm0 = in.imm0, imm1 = in.imm1;
        // A step computed in float64 from the float32 operand and rounded to float32 once.
        auto in_double = [&](auto f) { for (int e = 0; e < count; ++e) d[e] = static_cast<float>(f(static_cast<double>(x[e]))); };
        switch (in.opcode) {
            case kInput: {
                const Source& s = sources_[in.source];
                if (s.table) {
                    const uint8_t* codes = data[s.tensor];
                    walk(s, walker, count, [&](int e, int64_t offset) { d[e] = s.table[codes[offset]]; });
                } else {
                    const float* values = reinterpret_cast<const float*>(data[s.tensor]);
                    walk(s, walker, count, [&](int e, int64_t offset) { d[e] = values[offset]; });
                }
                return;
            }
            case kConstant: {
                const Source& s = sources_[in.source];
                walk(s, walker, count, [&](int e, int64_t offset) { d[e] = s.values[offset]; });
                return;
            }
            case kAdd: for (int e = 0; e < count; ++e) d[e] = x[e] + y[e]; return;
            case kSub: for (int e = 0; e < count; ++e) d[e] = x[e] - y[e]; return;
            case kMul: for (int e = 0; e < count; ++e) d[e] = x[e] * y[e]; return;
            case kDiv: for (int e = 0; e < count; ++e) d[e] = x[e] / y[e]; return;
            case kMax: for (int e = 0; e < count; ++e) d[e] = maximum(x[e], y[e]); return;
            case kMin: for (int e = 0; e < count; ++e) d[e] = minimum(x[e], y[e]); return;
            case kNeg: for (int e = 0; e < count; ++e) d[e] = -x[e]; return;
            case kAbs: for (int e = 0; e < count; ++e) d[e] = std::fabs(x[e]); return;
            case kRelu: for (int e = 0; e < count; ++e) d[e] = maximum(x[e], 0.0f); return;
            case kClip: for (int e = 0; e < count; ++e) d[e] = minimum(maximum(x[e], imm0), imm1); return;
            case kLeakyRelu: for (int e = 0; e < count; ++e) d[e] = x[e] < 0 ? imm0 * x[e] : x[e]; return;
            case kPrelu: for (int e = 0; e < count; ++e) d[e] = x[e] < 0 ? y[e] * x[e] : x[e]; return;
            case kHardSigmoid: for (int e = 0; e < count; ++e) d[e] = hard_sigmoid(x[e], imm0, imm1); return;
            case kHardSwish: for (int e = 0; e < count; ++e) d[e] = x[e] * hard_sigmoid(x[e], imm0, imm1); return;
            case kSigmoid: return in_double([](double v) { return sigmoid(v); });
            case kTanh: return in_double([](double v) { return std::tanh(v); });
            case kExp: return in_double([](double v) { return std::exp(v); });
            case kLog: return in_double([](double v) { return std::log(v); });
            case kSqrt: return in_double([](double v) { return std::sqrt(v); });
            case kErf: return in_double([](double v) { return std::erf(v); });
            case kPow:
                for (int e = 0; e < count; ++e) d[e] = static_cast<float>(std::pow(static_cast<double>(x[e]), static_cast<double>(y[e])));
                return;
            case kSoftplus: return in_double([](double v) { return softplus(v); });
            case kMish: return in_double([](double v) { return mish(v); });
            case kGelu:
                if (imm0 == 0.0f) return in_double([](double v) { return gelu_erf(v); });
                return in_double([](double v) { return gelu_tanh(v); });
            case kReciprocal: for (int e = 0; e < count; ++e) d[e] = 1.0f / x[e]; return;
            case kFloor: for (int e = 0; e < count; ++e) d[e] = std::floor(x[e]); return;
            case kCeil: for (int e = 0; e < count; ++e) d[e] = std::ceil(x[e]); return;
        }
    }

    int rank_;                                // of the walk: the output's rank plus the batch axis
    std::array<int64_t, kMaxRank + 1> extent_{};  // extent_[0], the batch axis, is never carried out of
    int inner_;                               // output elements per leading index
    std::vector<Source> sources_;             // the inputs, then the constants
    int constant_count_ = 0;
    std::vector<Instruction> program_;
    int registers_, result_;
};

std::unique_ptr<Operator> make_float_expression(const Attributes& attrs, BuildContext& context) {
    return std::make_unique<FloatExpression>(attrs, context);
}

}  // namespace

EDGE_REGISTER_OP("float_expression", make_float_expression);

}  // namespace edge
