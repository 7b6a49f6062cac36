// Block fusion (see fused_block.h): the fused op, and finding the chains it replaces.
#include "fused_block.h"

#include <cstring>

namespace edge {

namespace {

inline size_t align64(size_t bytes) { return (bytes + 63) / 64 * 64; }

// One fused block. A thread takes a run of output rows of one sample and walks it in strips of strip_rows_:
// the expansion writes the strip's input rows into its expanded-rows buffer (rows a strip shares with the one
// before stay where they are; the buffer moves its last rows to the front only when it is full), the
// depthwise conv reads that buffer as a strip-high image (its top padding adjusted to where the strip
// starts) into the depthwise-rows buffer, and the projection writes the strip's rows of the block's output.
class FusedBlock final : public Operator {
  public:
    // Strip buffers aim at this many bytes of expanded rows: a few strips' worth stays in L2 beside the
    // weights, and a strip is many GEMM tiles.
    static constexpr size_t kStripBytes = 48 * 1024;
    // A sample's rows are cut into at most this many runs per thread, so a descheduled thread's rows are
    // taken by the others; each cut costs the (kernel_h - stride_h) expanded rows two runs both compute.
    static constexpr int kRunsPerThread = 2;
    static constexpr int kMinRunRows = 4;

    FusedBlock(const Operator* expand, const Operator& depthwise, const Operator& project, BuildContext& build)
        : has_expand_(expand != nullptr), dw_(*depthwise.fusable_depthwise()), project_(*project.fusable_conv()) {
        if (has_expand_) expand_ = *expand->fusable_conv();
        backend_ = &build.backend();
        depthwise_kernel_ = depthwise_kernel(*backend_, dw_.layout);
        tensors_.inputs = {has_expand_ ? expand->tensors().inputs[0] : depthwise.tensors().inputs[0]};
        if (project_.residual) tensors_.inputs.push_back(project.tensors().inputs[1]);
        tensors_.output = project.tensors().output;
        in_row_bytes_ = static_cast<size_t>(dw_.in_w) * dw_.channels;
        strip_rows_ = static_cast<int>(std::max<size_t>(1, kStripBytes / (dw_.stride_h * in_row_bytes_)));
        strip_rows_ = std::min(strip_rows_, dw_.out_h);
        capacity_rows_ = 4 * window_rows(strip_rows_);
        // Each 1x1 stage widens its input rows to int16 pairs first (conv_driver.h).
        size_t wide = static_cast<size_t>(strip_rows_) * project_.out_w * project_.wide_c;
        if (has_expand_) wide = std::max(wide, static_cast<size_t>(window_rows(strip_rows_)) * expand_.out_w * expand_.wide_c);
        expanded_bytes_ = has_expand_ ? align64(capacity_rows_ * in_row_bytes_) : 0;
        depthwise_bytes_ = align64(static_cast<size_t>(strip_rows_) * dw_.out_w * dw_.channels);
        build.need_scratch(expanded_bytes_ + depthwise_bytes_ + align64(wide * sizeof(int16_t)) + 64);
    }

    void run(const ExecutionContext& context) const override {
        const uint8_t* input = context.tensor(tensors_.inputs[0]);
        const uint8_t* skip = project_.residual ? context.tensor(tensors_.inputs[1]) : nullptr;
        uint8_t* output = context.tensor(tensors_.output);
        const int threads = context.scheduler.threads(), batch = context.batch;
        // Runs per sample: one when each thread has samples of its own, else enough for every thread.
        const int wanted = threads == 1 ? 1 : (kRunsPerThread * threads + batch - 1) / batch;
        const int runs = std::max(1, std::min(wanted, dw_.out_h / kMinRunRows));
        context.scheduler.parallel(batch * runs, 1, [&](int begin, int end, int thread) {
            uint8_t* scratch = static_cast<uint8_t*>(context.scratch(thread));
            for (int task = begin; task < end;) {  // consecutive runs of one sample are one run
                const int n = task / runs, last = std::min(end, (n + 1) * runs);
                const int first_row = static_cast<int>(static_cast<long>(dw_.out_h) * (task % runs) / runs);
                const int end_row = static_cast<int>(static_cast<long>(dw_.out_h) * ((last - 1) % runs + 1) / runs);
                rows(input, skip, output, n, first_row, end_row, scratch);
                task = last;
            }
        });
    }

  private:
    // Input rows the depthwise window of `count` output rows spans.
    int window_rows(int count) const { return (count - 1) * dw_.stride_h + dw_.kernel_h; }

    // Output rows [row_begin, row_end) of sample n.
    void rows(const uint8_t* input, const uint8_t* skip, uint8_t* output, int n, int row_begin, int row_end, uint8_t* scratch) const {
        uint8_t* expanded = scratch;  // rows [base, held) of the expansion, row base first
        uint8_t* depthwise_rows = scratch + expanded_bytes_;
        int16_t* wide = reinterpret_cast<int16_t*>(depthwise_rows + depthwise_bytes_);
        int base = 0, held = 0;
        for (int row = row_begin; row < row_end; row += strip_rows_) {
            const int rows_out = std::min(strip_rows_, row_end - row);
            const int top = row * dw_.stride_h - dw_.pad_top;  // the window's first input row (may be padding)
            const int first = std::max(0, top), end = std::min(dw_.in_h, top + window_rows(rows_out));
            const uint8_t* window;
            if (has_expand_) {
                if (held <= first) {
                    base = held = first;
                } else if (end - base > capacity_rows_) {  // keep the rows still needed, at the front
                    std::memmove(expanded, expanded + (first - base) * in_row_bytes_, (held - first) * in_row_bytes_);
                    base = first;
                }
                if (end > held) expand(input, n, held, end, expanded + (held - base) * in_row_bytes_, wide);
                held = std::max(held, end);
                window = expanded + (first - base) * in_row_bytes_;
            } else {
                window = input + (static_cast<size_t>(n) * dw_.in_h + first) * in_row_bytes_;
            }
            DepthwiseOp strip = dw_;
            strip.in_h = end - first, strip.out_h = rows_out, strip.pad_top = first - top;
            depthwise_kernel_(strip, window, depthwise_rows, 0, rows_out * dw_.out_w);
            ConvOp project = project_;
            project.in_h = project.out_h = project.wide_h = rows_out;
            const size_t at = (static_cast<size_t>(n) * project_.out_h + row) * project_.out_w * project_.out_c;
            pointwise(project, depthwise_rows, skip ? skip + at : nullptr, output + at, wide);
        }
    }

    // Expanded rows [begin, end) of sample n into `out`.
    void expand(const uint8_t* input, int n, int begin, int end, uint8_t* out, int16_t* wide) const {
        ConvOp strip = expand_;
        strip.in_h = strip.out_h = strip.wide_h = end - begin;
        pointwise(strip, input + (static_cast<size_t>(n) * expand_.in_h + begin) * expand_.in_w * expand_.in_c, nullptr, out, wide);
    }

    // A 1x1 stage `strip` (its in_h rows of `codes`, as many of output), its rows widened into `wide` first.
    void pointwise(const ConvOp& strip, const uint8_t* codes, const uint8_t* skip, uint8_t* out, int16_t* wide) const {
        const Range all{0, strip.out_h * strip.out_w, 0, strip.groups * strip.blocks};
        backend_->widen(strip, codes, wide, 0, strip.wide_h);
        backend_->conv(strip, wide, skip, out, all);
    }

    bool has_expand_;
    ConvOp expand_{};
    DepthwiseOp dw_;
    ConvOp project_;
    const Backend* backend_;
    void (*depthwise_kernel_)(const DepthwiseOp&, const uint8_t*, uint8_t*, int, int) = nullptr;
    size_t in_row_bytes_, expanded_bytes_, depthwise_bytes_;
    int strip_rows_, capacity_rows_;
};

// Whether conv `c` can be the projection after depthwise `d`, or (expand) the expansion before it.
bool projects(const DepthwiseOp& d, const ConvOp& c) {
    return c.in_h == d.out_h && c.in_w == d.out_w && c.in_c == d.channels;
}
bool expands(const ConvOp& c, const DepthwiseOp& d) {
    return !c.residual && c.out_h == d.in_h && c.out_w == d.in_w && c.out_c == d.channels;
}

}  // namespace

FusedPlan fuse_blocks(const std::vector<std::unique_ptr<Operator>>& ops, BuildContext& build, int min_rows) {
    FusedPlan plan;
    std::vector<int> readers;
    for (const auto& op : ops)
        for (int t : op->tensors().inputs) {
            if (t >= static_cast<int>(readers.size())) readers.resize(t + 1, 0);
            ++readers[t];
        }
    auto only_reader = [&](int tensor) { return tensor >= 0 && tensor < static_cast<int>(readers.size()) && readers[tensor] == 1; };
    for (size_t i = 0; i < ops.size(); ++i) {
        const DepthwiseOp* d = ops[i]->fusable_depthwise();
        const ConvOp* p = i + 1 < ops.size() ? ops[i + 1]->fusable_conv() : nullptr;
        if (d && p && d->out_h >= min_rows && projects(*d, *p) && ops[i + 1]->tensors().inputs[0] == ops[i]->tensors().output &&
            only_reader(ops[i]->tensors().output)) {
            const Operator* expand = nullptr;
            // (the op before, if it is still unfused: not a block's projection)
            const ConvOp* e = !plan.ops.empty() && plan.ops.back() == ops[i - 1].get() ? ops[i - 1]->fusable_conv() : nullptr;
            if (e && expands(*e, *d) && ops[i - 1]->tensors().output == ops[i]->tensors().inputs[0] &&
                only_reader(ops[i]->tensors().inputs[0])) {
                expand = ops[i - 1].get();
                plan.ops.pop_back();
            }
            plan.owned.push_back(std::make_unique<FusedBlock>(expand, *ops[i], *ops[i + 1], build));
            plan.ops.push_back(plan.owned.back().get());
            ++plan.blocks;
            ++i;  // the projection is in the block
            continue;
        }
        plan.ops.push_back(ops[i].get());
    }
    return plan;
}

}  // namespace edge
