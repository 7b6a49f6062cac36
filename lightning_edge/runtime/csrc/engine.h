// The runtime's executor, without Python: a compiled plan (ops over uint8 NHWC tensors, each built by its
// registered factory) run on a thread pool, with every buffer planned once per batch size. bindings.cpp
// builds it from the dicts and numpy arrays session.py passes; tests/native/check_kernels.cpp builds it
// from Attributes by hand.
#pragma once

#include <array>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "attributes.h"
#include "fused_block.h"
#include "kernels.h"
#include "memory_planner.h"
#include "op_registry.h"
#include "scheduler.h"

namespace edge {

// One plan op: its kind (the registry's key) and its fields.
struct OpDescription {
    std::string kind;
    Attributes attributes;
};

class Engine {
  public:
    // Builds and checks every op (std::invalid_argument on the first problem), then the plan as a whole:
    // the input ops first (quantize, or float_input for a float32 input; their indices 0 .. inputs - 1 once each),
    // the output ops last (dequantize or float_output; indices 0 .. outputs - 1 once each), no tensor read before
    // it is written or written twice.
    // `arrays` must outlive the engine; tensor sizes are codes per sample.
    // `spin`: how long an idle worker spins before it sleeps, in pause instructions; `sharing`: when the pool
    // acts as if other busy processes share the CPU (ThreadPool).
    Engine(const std::vector<OpDescription>& ops, std::vector<size_t> tensor_sizes, const ArrayTable& arrays, int threads,
           const std::string& kernels, int spin = ThreadPool::kDefaultSpin, CpuSharing sharing = CpuSharing::kAuto);

    const char* backend() const { return backend_.name; }
    int threads() const { return scheduler_.threads(); }
    int spin() const { return scheduler_.spin(); }
    CpuSharing sharing() const { return scheduler_.sharing(); }
    bool contended() const { return scheduler_.contended(); }
    int op_count() const { return static_cast<int>(ops_.size()); }
    int tensor_count() const { return op_memory_->tensor_count(); }
    size_t tensor_size(int index) const { return op_memory_->tensor_size(index); }
    const OpTensors& op_tensors(int index) const { return ops_[index]->tensors(); }

    // How many inputs the plan reads (its input ops). The batch size of a float32 input `index` of this shape;
    // std::invalid_argument unless it is (batch, C, H, W) with its input op's C, H, W and 1 <= batch <= 2^20.
    int input_count() const { return static_cast<int>(inputs_.size()); }
    int check_input(const std::vector<long>& shape, int index = 0) const;
    // How many outputs the plan writes (its output ops), and output `index`'s shape: (batch, classes) when it
    // is 1x1, else (batch, C, H, W).
    int output_count() const { return static_cast<int>(outputs_.size()); }
    std::vector<long> output_shape(int batch, int index = 0) const;

    // The inputs, by input index (`batch` samples of each, checked by check_input), and where each output goes,
    // by output index: output_count() buffers of output_shape(batch, i) floats.
    using Inputs = std::vector<const float*>;
    using Outputs = std::vector<float*>;

    // Runs the plan on `batch` float32 NCHW samples of each input; writes each float32 output to its buffer
    // (std::invalid_argument unless there is one per input and output). The pointer forms are for plans of one
    // input and one output. A batch of at least batch_group() samples per thread is cut into groups of that
    // many samples, which the threads claim like chunks and run through the whole plan alone, each in buffers
    // of its own: no hand-over between ops, and a core keeps its group's tensors in its cache (more samples
    // per group would not fit). A smaller batch runs op by op, each op's work shared by every thread.
    static constexpr int kBatchGroup = 2;
    // How many batch groups run() makes of `batch` samples (1: op by op).
    int batch_groups(int batch) const;
    // Samples per batch group; 0 runs every batch op by op.
    int batch_group() const { return batch_group_; }
    void set_batch_group(int samples);
    // Whether run() runs the inverted-residual blocks fused (fused_block.h; on by default), and how many
    // blocks that is. Trace, profile and time_op always run the ops one by one.
    bool fusion() const { return fusion_; }
    void set_fusion(bool on) { fusion_ = on; }
    int fused_blocks() const { return fused_.blocks; }
    // A block is fused where its depthwise output has at least this many rows per thread.
    static constexpr int kFuseRowsPerThread = 8;
    void run(const Inputs& x, int batch, const Outputs& out);
    void run(const float* x, int batch, float* out) { run(Inputs{x}, batch, Outputs{out}); }
    // Like run, and calls tensor(index, codes, bytes) after each op with the uint8 tensor it wrote.
    void trace(const Inputs& x, int batch, const Outputs& out, const std::function<void(int, const uint8_t*, size_t)>& tensor);
    void trace(const float* x, int batch, const Outputs& out, const std::function<void(int, const uint8_t*, size_t)>& tensor) {
        trace(Inputs{x}, batch, out, tensor);
    }
    void trace(const float* x, int batch, float* out, const std::function<void(int, const uint8_t*, size_t)>& tensor) {
        trace(Inputs{x}, batch, Outputs{out}, tensor);
    }
    // Median seconds each op takes inside whole runs (`repeats` runs after one warm-up): per-layer cost.
    std::vector<double> profile(const Inputs& x, int batch, const Outputs& out, int repeats);
    // Seconds per call of op `index` alone at `batch`, the median of `repeats` after a warm-up, on
    // deterministic pseudo-random input codes: what primitive selection compares.
    double time_op(int index, int batch, int repeats);

  private:
    void check_batch(int batch) const;
    void check_outputs(const Outputs& out) const;
    void check_buffers(const Inputs& x, const Outputs& out) const;
    // (C, H, W) of the boundary ops ops[begin, end), by their index, checked to be 0 .. end - begin - 1 once each.
    static std::vector<std::array<int, 3>> boundary_shapes(const std::vector<OpDescription>& ops, size_t begin, size_t end,
                                                           const char* what);
    // Op by op (trace, profile, time_op): the unfused plan's buffers.
    ExecutionContext context(Arena& arena, int batch, const float* const* x, float* const* out) {
        return ExecutionContext{scheduler_, backend_, *op_memory_, arena, batch, x, out};
    }
    // What run() runs: the fused plan, or every op.
    const std::vector<const Operator*>& run_ops() const { return fusion_ ? fused_.ops : unfused_; }
    MemoryPlanner& run_memory() { return fusion_ && memory_ ? *memory_ : *op_memory_; }
    // Samples [first, first + count) of the batch through every op on pool thread `thread`, in its arena.
    void run_group(Arena& arena, int thread, int first, int count, const Inputs& x, const Outputs& out);

    const Backend& backend_;
    Scheduler scheduler_;
    int batch_group_ = kBatchGroup;
    std::vector<std::unique_ptr<Scheduler>> group_schedulers_;  // per pool thread: the single-thread scheduler of its groups
    std::vector<std::unique_ptr<Operator>> ops_;
    std::vector<const Operator*> unfused_;  // ops_, in order
    FusedPlan fused_;
    bool fusion_ = true;
    std::unique_ptr<MemoryPlanner> memory_;     // the fused plan's buffers (none when no block is fused)
    std::unique_ptr<MemoryPlanner> op_memory_;  // the unfused plan's
    std::vector<std::array<int, 3>> inputs_, outputs_;  // (C, H, W) of each input and output, by index
};

}  // namespace edge
