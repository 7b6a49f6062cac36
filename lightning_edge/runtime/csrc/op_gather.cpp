// gather: codes that only move. Output element j of each sample copies element indices[j] of input
// sources[j] (the pad code where sources[j] is -1), through that input's requantization table where its grid
// is not the output's (INT8_SPEC rule 11). The compiler finds the map by running the ONNX data-movement ops
// (reshape, transpose, slice, pad, nearest resize, ...) on element numbers, so one op runs all of them.
// Elements are uint8 codes (element_bytes 1) or, inside a float region, float32 values (element_bytes 4:
// no tables, the pad value is float32(pad)); sizes and indices count elements either way.
#include <type_traits>

#include "op_registry.h"

namespace edge {

namespace {

class Gather final : public Operator {
  public:
    Gather(const Attributes& attrs, BuildContext& context) {
        size_ = attrs.get_int("size");
        check_positive({size_}, "gather");
        element_bytes_ = attrs.has("element_bytes") ? attrs.get_int("element_bytes") : 1;
        if (element_bytes_ != 1 && element_bytes_ != 4)
            throw std::invalid_argument("gather: 'element_bytes' must be 1 (codes) or 4 (float32)");
        const int count = list_length(attrs, "inputs", "gather");
        for (int i = 0; i < count; ++i) {
            const int size = attrs.get_int(list_item("input_sizes", i).c_str());
            check_positive({size}, "gather");
            const std::string table = list_item("tables", i);
            if (element_bytes_ == 4 && attrs.has(table.c_str()))
                throw std::invalid_argument("gather: float32 elements take no requantization tables");
            inputs_.push_back({size, attrs.has(table.c_str()) ? context.array<uint8_t>(attrs, table.c_str(), 256) : nullptr});
            tensors_.inputs.push_back(context.tensor_index(attrs, list_item("inputs", i).c_str(), bytes(size)));
        }
        indices_ = context.array<int32_t>(attrs, "indices", size_);
        sources_ = attrs.has("sources") ? context.array<int32_t>(attrs, "sources", size_) : nullptr;
        pad_ = attrs.get_int("pad");
        if (pad_ < 0 || pad_ > 255) throw std::invalid_argument("gather: the pad code must be uint8");
        if (!sources_ && count != 1) throw std::invalid_argument("gather: several inputs need a sources array");
        for (int j = 0; j < size_; ++j) {  // every element read lies inside its input
            const int source = sources_ ? sources_[j] : 0;
            if (source < -1 || source >= count || (source >= 0 && (indices_[j] < 0 || indices_[j] >= inputs_[source].size)))
                throw std::invalid_argument("gather: element " + std::to_string(j) + " reads outside its input");
        }
        tensors_.output = context.tensor_index(attrs, "output", bytes(size_));
    }

    void run(const ExecutionContext& context) const override {
        if (element_bytes_ == 4) return run_as<float>(context);
        run_as<uint8_t>(context);
    }

  private:
    size_t bytes(int elements) const { return static_cast<size_t>(elements) * element_bytes_; }

    // Moves elements of type T (codes, or float32 values: those never have a table).
    template <class T>
    void run_as(const ExecutionContext& context) const {
        T* out = reinterpret_cast<T*>(context.tensor(tensors_.output));
        std::vector<const T*> data;
        for (int index : tensors_.inputs) data.push_back(reinterpret_cast<const T*>(context.tensor(index)));
        const T pad = static_cast<T>(pad_);
        const int size = size_;
        context.scheduler.parallel(context.batch, 1, [&](int begin, int end, int) {
            for (int n = begin; n < end; ++n) {
                T* dst = out + static_cast<size_t>(n) * size;
                if (!sources_ && !inputs_[0].table) {
                    const T* src = data[0] + static_cast<size_t>(n) * inputs_[0].size;
                    for (int j = 0; j < size; ++j) dst[j] = src[indices_[j]];
                    continue;
                }
                for (int j = 0; j < size; ++j) {
                    const int source = sources_ ? sources_[j] : 0;
                    if (source < 0) {
                        dst[j] = pad;
                        continue;
                    }
                    const T value = data[source][static_cast<size_t>(n) * inputs_[source].size + indices_[j]];
                    if constexpr (std::is_same_v<T, uint8_t>)
                        dst[j] = inputs_[source].table ? inputs_[source].table[value] : value;
                    else
                        dst[j] = value;
                }
            }
        });
    }

    struct Input {
        int size;
        const uint8_t* table;
    };
    int size_, pad_, element_bytes_;
    std::vector<Input> inputs_;
    const int32_t* indices_;
    const int32_t* sources_;
};

std::unique_ptr<Operator> make_gather(const Attributes& attrs, BuildContext& context) {
    return std::make_unique<Gather>(attrs, context);
}

}  // namespace

EDGE_REGISTER_OP("gather", make_gather);

}  // namespace edge
