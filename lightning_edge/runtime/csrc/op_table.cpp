// table: a unary function on codes as a lookup table, out[i] = tables[channel][in[i]] (INT8_SPEC rule 10: the
// compiler evaluates dequantize, the float function and requantize once per code). One table, or one per
// NHWC channel where the function has per-channel constants (PRelu, BatchNormalization, ...). One table runs
// through the lookup kernel of the kernel path (lookup.h).
#include <cstring>

#include "lookup.h"
#include "op_registry.h"

namespace edge {

namespace {

class Table final : public Operator {
  public:
    Table(const Attributes& attrs, BuildContext& context) {
        channels_ = attrs.get_int("channels"), size_ = attrs.get_int("size"), count_ = attrs.get_int("table_count");
        check_positive({channels_, size_, count_}, "table");
        if ((count_ != 1 && count_ != channels_) || size_ % channels_)
            throw std::invalid_argument("table: " + std::to_string(count_) + " tables for " + std::to_string(channels_) +
                                        " channels of " + std::to_string(size_) + " codes");
        tables_ = context.array<uint8_t>(attrs, "tables", static_cast<size_t>(count_) * 256);
        tensors_.inputs = {context.tensor_index(attrs, "input", size_)};
        tensors_.output = context.tensor_index(attrs, "output", size_);
        const LookupKernel vbmi = lookup_avx512vbmi();
        if (vbmi && std::strcmp(context.backend().name, "avx512") == 0) lookup_ = vbmi;
    }

    void run(const ExecutionContext& context) const override {
        const uint8_t* in = context.tensor(tensors_.inputs[0]);
        uint8_t* out = context.tensor(tensors_.output);
        const int channels = channels_;
        const uint8_t* tables = tables_;
        const int pixels = static_cast<int>(static_cast<size_t>(size_) * context.batch / channels);
        context.scheduler.parallel(pixels, 256, [&](int begin, int end, int) {
            if (count_ == 1) {
                const size_t first = static_cast<size_t>(begin) * channels;
                lookup_(tables, in + first, out + first, static_cast<size_t>(end - begin) * channels);
                return;
            }
            for (int p = begin; p < end; ++p) {
                const size_t base = static_cast<size_t>(p) * channels;
                for (int c = 0; c < channels; ++c) out[base + c] = tables[c * 256 + in[base + c]];
            }
        });
    }

  private:
    int channels_, size_, count_;
    const uint8_t* tables_;
    LookupKernel lookup_ = lookup_scalar;
};

std::unique_ptr<Operator> make_table(const Attributes& attrs, BuildContext& context) {
    return std::make_unique<Table>(attrs, context);
}

}  // namespace

EDGE_REGISTER_OP("table", make_table);

}  // namespace edge
