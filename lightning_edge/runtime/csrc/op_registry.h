// The op registry: each plan op kind ("conv", "max_pool", ...) is one Operator subclass in its own file,
// registered there by name with EDGE_REGISTER_OP, as in ONNX Runtime's or XNNPACK's kernel registries. The
// engine builds a plan by looking each op's kind up here; nothing else in the engine knows the kinds, so
// adding an op touches only its own file (plus its plan dataclass, compiler rule, reference and test).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "attributes.h"
#include "kernels.h"
#include "memory_planner.h"
#include "scheduler.h"

namespace edge {

// What an op's factory may ask of the engine while the plan is built.
class BuildContext {
  public:
    BuildContext(const Backend& backend, const std::vector<size_t>& tensor_sizes, const ArrayTable& arrays)
        : backend_(backend), tensor_sizes_(tensor_sizes), arrays_(arrays) {}

    // The kernel path the engine runs (some layouts exist on one path only).
    const Backend& backend() const { return backend_; }

    // The plan tensor index at attrs[key], checked to exist and to hold `expected` codes per sample.
    int tensor_index(const Attributes& attrs, const char* key, size_t expected) const;

    // The plan tensor index at attrs[key], checked to exist; `bytes` receives its size per sample (for ops
    // whose record does not state it, such as a broadcast operand, which then check their reads against it).
    int tensor_index_sized(const Attributes& attrs, const char* key, size_t& bytes) const;

    // The element count of the named array attrs[key] points at (its type is checked by array<T>).
    size_t array_count(const Attributes& attrs, const char* key) const;

    // The named array attrs[key] points at, checked for its element type and count.
    template <class T>
    const T* array(const Attributes& attrs, const char* key, size_t count) const {
        return get_array<T>(attrs, arrays_, key, count);
    }

    // Asks for a workspace of `bytes` per sample, shared by the op's threads while it runs.
    void need_workspace(size_t bytes) { workspace_per_sample_ = std::max(workspace_per_sample_, bytes); }
    // Asks for `bytes` of scratch per thread, the same for every batch size.
    void need_scratch(size_t bytes) { scratch_per_thread_ = std::max(scratch_per_thread_, bytes); }

    size_t workspace_per_sample() const { return workspace_per_sample_; }
    size_t scratch_per_thread() const { return scratch_per_thread_; }

  private:
    const Backend& backend_;
    const std::vector<size_t>& tensor_sizes_;
    const ArrayTable& arrays_;
    size_t workspace_per_sample_ = 0, scratch_per_thread_ = 0;
};

// What an op sees while it runs on one batch.
struct ExecutionContext {
    Scheduler& scheduler;
    const Backend& backend;
    MemoryPlanner& memory;
    Arena& arena;
    int batch;
    const float* const* inputs;  // the plan's float32 NCHW inputs, by input index; nullptr while an op is timed alone
    float* const* outputs;       // the plan's float32 outputs, by output index; nullptr likewise
    int scratch_base = 0;        // the first scratch slot of this run's threads (a batch group's, see Engine::run)

    // Input `index` (an input op's index, checked against the plan's inputs by the engine).
    const float* input(int index) const { return inputs ? inputs[index] : nullptr; }
    // Where output `index` goes (an output op's index, checked against the plan's outputs by the engine).
    float* output(int index) const { return outputs ? outputs[index] : nullptr; }
    uint8_t* tensor(int index) const { return memory.tensor(arena, index); }
    size_t tensor_size(int index) const { return memory.tensor_size(index); }  // codes per sample
    void* workspace() const { return arena.workspace.data(); }
    void* scratch(int thread) const { return memory.scratch(scratch_base + thread); }
};

// One built plan op: which tensors it reads and writes, and how it runs.
class Operator {
  public:
    virtual ~Operator() = default;
    virtual void run(const ExecutionContext& context) const = 0;
    const OpTensors& tensors() const { return tensors_; }
    // What block fusion (fused_block.h) may run of this op as one stage of a fused block: its fields, when
    // its kernel reads and writes whole rows of NHWC codes with no workspace (nullptr otherwise).
    virtual const ConvOp* fusable_conv() const { return nullptr; }
    virtual const DepthwiseOp* fusable_depthwise() const { return nullptr; }

  protected:
    OpTensors tensors_;
};

// Builds an op from its plan fields; throws std::invalid_argument on any field it cannot run.
using OperatorFactory = std::unique_ptr<Operator> (*)(const Attributes& attrs, BuildContext& context);

// The factory of `kind`; "unknown op kind 'kind'" when none is registered.
OperatorFactory find_operator(const std::string& kind);

// Every registered kind, sorted (the native harness checks that static registration survived linking).
std::vector<std::string> registered_operators();

// Registers at static-initialization time; a kind registered twice is a build error that stops the process.
struct OperatorRegistration {
    OperatorRegistration(const char* kind, OperatorFactory factory);
};

#define EDGE_REGISTER_OP(kind, factory) static const ::edge::OperatorRegistration edge_registration_##factory(kind, factory)

}  // namespace edge
