// float_matmul: out[i] = a[i] (m x k) @ b[i] (k x n) for the `batch` leading matrices of each sample, on
// float32 operands with products and sums in float64, rounded to float32 once (INT8_SPEC rule 17). An operand
// is an f32 tensor (per sample) or a constant array; a batch stride of 0 broadcasts it over the matrices.
#include "float_region.h"
#include "op_registry.h"

namespace edge {

namespace {

// One operand: a tensor (its data bound per run) or a constant, and its element strides.
struct Operand {
    int tensor = -1;                 // the operand's position in tensors_.inputs, -1 for a constant
    const float* constant = nullptr;
    int64_t sample_stride = 0;       // elements per sample of a tensor operand; 0 for a constant
    int64_t batch_stride = 0;        // elements between leading matrices
};

class FloatMatMul final : public Operator {
  public:
    FloatMatMul(const Attributes& attrs, BuildContext& context) {
        batch_ = attrs.get_int("batch"), m_ = attrs.get_int("m"), k_ = attrs.get_int("k"), n_ = attrs.get_int("n");
        const size_t a_size = element_count({m_, k_}, "float_matmul"), b_size = element_count({k_, n_}, "float_matmul");
        const size_t out_size = element_count({batch_, m_, n_}, "float_matmul");
        a_ = operand(attrs, context, "a", a_size);
        b_ = operand(attrs, context, "b", b_size);
        tensors_.output = context.tensor_index(attrs, "output", f32_bytes(out_size));
        context.need_scratch(static_cast<size_t>(n_) * sizeof(double));
    }

    void run(const ExecutionContext& context) const override {
        const float* a_data = data(context, a_), *b_data = data(context, b_);
        float* out = reinterpret_cast<float*>(context.tensor(tensors_.output));
        const int m = m_, k = k_, n = n_, batch = batch_;
        context.scheduler.parallel(context.batch * batch * m, 1, [&](int begin, int end, int thread) {
            double* acc = static_cast<double*>(context.scratch(thread));
            for (int row = begin; row < end; ++row) {  // (sample, matrix, row of a)
                const int sample = row / (batch * m), matrix = row / m % batch, r = row % m;
                const float* a = a_data + sample * a_.sample_stride + matrix * a_.batch_stride + static_cast<int64_t>(r) * k;
                const float* b = b_data + sample * b_.sample_stride + matrix * b_.batch_stride;
                std::fill(acc, acc + n, 0.0);
                for (int p = 0; p < k; ++p) {  // i, k, j order: the inner loop runs along b's row and acc
                    const double av = a[p];
                    const float* b_row = b + static_cast<int64_t>(p) * n;
                    for (int j = 0; j < n; ++j) acc[j] += av * static_cast<double>(b_row[j]);
                }
                float* o = out + static_cast<int64_t>(row) * n;
                for (int j = 0; j < n; ++j) o[j] = static_cast<float>(acc[j]);
            }
        });
    }

  private:
    // Operand `name` (the tensor `name` or the array `name_constant`), checked to hold every matrix it is read at.
    Operand operand(const Attributes& attrs, BuildContext& context, const std::string& name, size_t matrix) {
        const std::string constant = name + "_constant", stride_key = name + "_batch_stride";
        const bool is_tensor = attrs.has(name.c_str());
        if (is_tensor == attrs.has(constant.c_str()))
            throw std::invalid_argument("float_matmul: operand '" + name + "' must be a tensor or a constant, not both or neither");
        Operand o;
        o.batch_stride = attrs.get_int(stride_key.c_str());
        if (o.batch_stride < 0 || o.batch_stride > static_cast<int64_t>(kMaxFloatElements))
            throw std::invalid_argument("float_matmul: '" + stride_key + "' out of range");
        const int64_t needed = (batch_ - 1) * o.batch_stride + static_cast<int64_t>(matrix);
        size_t size = 0;
        if (is_tensor) {
            size_t bytes = 0;
            tensors_.inputs.push_back(context.tensor_index_sized(attrs, name.c_str(), bytes));
            if (bytes % sizeof(float)) throw std::invalid_argument("float_matmul: '" + name + "' is not an f32 tensor");
            o.tensor = static_cast<int>(tensors_.inputs.size()) - 1;
            size = bytes / sizeof(float);
            o.sample_stride = static_cast<int64_t>(size);
        } else {
            size = context.array_count(attrs, constant.c_str());
            o.constant = context.array<float>(attrs, constant.c_str(), size);
        }
        if (static_cast<uint64_t>(needed) > size)
            throw std::invalid_argument("float_matmul: operand '" + name + "' holds " + std::to_string(size) + " elements, " +
                                        std::to_string(batch_) + " matrices of it need " + std::to_string(needed));
        return o;
    }

    const float* data(const ExecutionContext& context, const Operand& o) const {
        return o.tensor < 0 ? o.constant : reinterpret_cast<const float*>(context.tensor(tensors_.inputs[o.tensor]));
    }

    int batch_, m_, k_, n_;
    Operand a_, b_;
};

std::unique_ptr<Operator> make_float_matmul(const Attributes& attrs, BuildContext& context) {
    return std::make_unique<FloatMatMul>(attrs, context);
}

}  // namespace

EDGE_REGISTER_OP("float_matmul", make_float_matmul);

}  // namespace edge
