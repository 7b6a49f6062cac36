// concat: NHWC tensors with the same pixels side by side along the channels; an input on another grid than
// the output's goes through its requantization table (INT8_SPEC rule 11), the others are copied.
#include <cstring>

#include "op_registry.h"

namespace edge {

namespace {

class Concat final : public Operator {
  public:
    Concat(const Attributes& attrs, BuildContext& context) {
        pixels_ = attrs.get_int("pixels"), channels_ = attrs.get_int("channels");
        check_positive({pixels_, channels_}, "concat");
        const int count = list_length(attrs, "inputs", "concat");
        long total = 0;
        for (int i = 0; i < count; ++i) {
            const int channels = attrs.get_int(list_item("input_channels", i).c_str());
            check_positive({channels}, "concat");
            total += channels;
            const std::string table = list_item("tables", i);
            pieces_.push_back({channels, attrs.has(table.c_str()) ? context.array<uint8_t>(attrs, table.c_str(), 256) : nullptr});
            tensors_.inputs.push_back(context.tensor_index(attrs, list_item("inputs", i).c_str(),
                                                           static_cast<size_t>(pixels_) * channels));
        }
        if (total != channels_) throw std::invalid_argument("concat: input channels do not add up to the output's");
        tensors_.output = context.tensor_index(attrs, "output", static_cast<size_t>(pixels_) * channels_);
    }

    void run(const ExecutionContext& context) const override {
        uint8_t* out = context.tensor(tensors_.output);
        std::vector<const uint8_t*> inputs;
        for (int index : tensors_.inputs) inputs.push_back(context.tensor(index));
        const int channels = channels_;
        context.scheduler.parallel(context.batch * pixels_, 64, [&](int begin, int end, int) {
            int offset = 0;
            for (size_t i = 0; i < pieces_.size(); ++i) {
                const Piece piece = pieces_[i];
                for (int p = begin; p < end; ++p) {
                    const uint8_t* src = inputs[i] + static_cast<size_t>(p) * piece.channels;
                    uint8_t* dst = out + static_cast<size_t>(p) * channels + offset;
                    if (piece.table) {
                        for (int c = 0; c < piece.channels; ++c) dst[c] = piece.table[src[c]];
                    } else {
                        std::memcpy(dst, src, piece.channels);
                    }
                }
                offset += piece.channels;
            }
        });
    }

  private:
    struct Piece {
        int channels;
        const uint8_t* table;
    };
    int pixels_, channels_;
    std::vector<Piece> pieces_;
};

std::unique_ptr<Operator> make_concat(const Attributes& attrs, BuildContext& context) {
    return std::make_unique<Concat>(attrs, context);
}

}  // namespace

EDGE_REGISTER_OP("concat", make_concat);

}  // namespace edge
