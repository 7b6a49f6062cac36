// The pybind-free engine core (see engine.h): plan-level checks, and running the built ops.
#include "engine.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>

#include "cpu_features.h"

namespace edge {

Engine::Engine(const std::vector<OpDescription>& ops, std::vector<size_t> tensor_sizes, const ArrayTable& arrays,
               int threads, const std::string& kernels, int spin, CpuSharing sharing)
    : backend_(choose_backend(kernels)), scheduler_(threads, spin, sharing) {
    BuildContext build(backend_, tensor_sizes, arrays);
    for (const OpDescription& op : ops) ops_.push_back(find_operator(op.kind)(op.attributes, build));
    // The ends read the plan's inputs (quantize their codes, float_input their float32 values) and write its outputs.
    auto reads_input = [](const OpDescription& op) { return op.kind == "quantize" || op.kind == "float_input"; };
    auto writes_output = [](const OpDescription& op) { return op.kind == "dequantize" || op.kind == "float_output"; };
    if (ops.size() < 2 || !reads_input(ops.front()) || !writes_output(ops.back()))
        throw std::invalid_argument("a plan starts with its quantize (or float_input) ops and ends with its "
                                    "dequantize (or float_output) ops");
    size_t first_output = ops.size() - 1, last_input = 0;
    while (first_output > 1 && writes_output(ops[first_output - 1])) --first_output;
    while (last_input + 1 < first_output && reads_input(ops[last_input + 1])) ++last_input;
    for (size_t i = last_input + 1; i < first_output; ++i)
        if (reads_input(ops[i]) || writes_output(ops[i]))
            throw std::invalid_argument("a plan has its input ops (quantize or float_input) first and its output ops "
                                        "(dequantize or float_output) last");
    inputs_ = boundary_shapes(ops, 0, last_input + 1, "input");
    outputs_ = boundary_shapes(ops, first_output, ops.size(), "output");
    for (const auto& op : ops_) unfused_.push_back(op.get());
    fused_ = fuse_blocks(ops_, build, kFuseRowsPerThread * scheduler_.threads());
    auto planner = [&](const std::vector<const Operator*>& order) {
        std::vector<OpTensors> uses;
        for (const Operator* op : order) uses.push_back(op->tensors());
        return std::make_unique<MemoryPlanner>(tensor_sizes, uses, build.workspace_per_sample(), build.scratch_per_thread(),
                                               scheduler_.threads());
    };
    op_memory_ = planner(unfused_);
    if (fused_.blocks > 0) memory_ = planner(fused_.ops);  // else run() shares trace's buffers
    for (int g = 0; g < scheduler_.threads(); ++g) group_schedulers_.push_back(std::make_unique<Scheduler>(1));
}

int Engine::batch_groups(int batch) const {
    if (batch_group_ == 0 || scheduler_.threads() == 1 || batch < batch_group_ * scheduler_.threads()) return 1;
    return (batch + batch_group_ - 1) / batch_group_;
}

void Engine::set_batch_group(int samples) {
    if (samples < 0 || samples > (1 << 20)) throw std::invalid_argument("batch_group must be 0 (op by op) or a sample count");
    batch_group_ = samples;
}

void Engine::run_group(Arena& arena, int thread, int first, int count, const Inputs& x, const Outputs& out) {
    Inputs inputs(x.size());
    Outputs outputs(out.size());
    for (size_t i = 0; i < x.size(); ++i)
        inputs[i] = x[i] + static_cast<size_t>(first) * inputs_[i][0] * inputs_[i][1] * inputs_[i][2];
    for (size_t i = 0; i < out.size(); ++i)
        outputs[i] = out[i] + static_cast<size_t>(first) * outputs_[i][0] * outputs_[i][1] * outputs_[i][2];
    ExecutionContext ctx{*group_schedulers_[thread], backend_, run_memory(), arena, count, inputs.data(), outputs.data(), thread};
    for (const Operator* op : run_ops()) op->run(ctx);
}

std::vector<std::array<int, 3>> Engine::boundary_shapes(const std::vector<OpDescription>& ops, size_t begin, size_t end,
                                                        const char* what) {
    std::vector<std::array<int, 3>> shapes(end - begin, {0, 0, 0});
    std::vector<bool> seen(shapes.size(), false);
    for (size_t i = begin; i < end; ++i) {  // each already read and checked by its factory
        const Attributes& a = ops[i].attributes;
        const int index = boundary_index(a);
        if (index >= static_cast<int>(shapes.size()) || seen[index])
            throw std::invalid_argument(std::string("the ") + what + " ops' indices must be 0 to " +
                                        std::to_string(shapes.size() - 1) + ", each once");
        seen[index] = true;
        shapes[index] = {a.get_int("channels"), a.get_int("height"), a.get_int("width")};
    }
    return shapes;
}

int Engine::check_input(const std::vector<long>& shape, int index) const {
    if (index < 0 || index >= input_count()) throw std::out_of_range("input index");
    const auto [channels, height, width] = inputs_[index];
    if (shape.size() != 4 || shape[1] != channels || shape[2] != height || shape[3] != width)
        throw std::invalid_argument("input " + std::to_string(index) + " must be float32 (batch, " + std::to_string(channels) +
                                    ", " + std::to_string(height) + ", " + std::to_string(width) + ")");
    if (shape[0] < 1 || shape[0] > (1 << 20)) throw std::invalid_argument("batch size must be at least 1");
    return static_cast<int>(shape[0]);
}

void Engine::check_batch(int batch) const {
    if (batch < 1 || batch > (1 << 20)) throw std::invalid_argument("batch size must be at least 1 and at most 2^20");
}

std::vector<long> Engine::output_shape(int batch, int index) const {
    if (index < 0 || index >= output_count()) throw std::out_of_range("output index");
    const auto [channels, height, width] = outputs_[index];
    if (height == 1 && width == 1) return {batch, channels};
    return {batch, channels, height, width};
}

void Engine::check_outputs(const Outputs& out) const {
    if (static_cast<int>(out.size()) != output_count())
        throw std::invalid_argument("the plan has " + std::to_string(output_count()) + " outputs, " +
                                    std::to_string(out.size()) + " buffers were given");
}

void Engine::check_buffers(const Inputs& x, const Outputs& out) const {
    if (static_cast<int>(x.size()) != input_count())
        throw std::invalid_argument("the plan has " + std::to_string(input_count()) + " inputs, " + std::to_string(x.size()) +
                                    " were given");
    check_outputs(out);
}

void Engine::run(const Inputs& x, int batch, const Outputs& out) {
    check_batch(batch);
    check_buffers(x, out);
    const int groups = batch_groups(batch);
    MemoryPlanner& memory = run_memory();
    if (groups == 1) {
        const ExecutionContext ctx{scheduler_, backend_, memory, memory.arena(batch), batch, x.data(), out.data()};
        for (const Operator* op : run_ops()) op->run(ctx);
        return;
    }
    // One arena per pool thread, reused by each group it runs; all of one batch size, so making one never
    // drops another. They are made here, before the groups start (arena() is not thread-safe).
    std::vector<Arena*> arenas;
    const int group = batch_group_;
    for (int t = 0; t < scheduler_.threads(); ++t) arenas.push_back(&memory.arena(group, t));
    scheduler_.parallel(groups, 1, [&](int begin, int end, int thread) {
        for (int g = begin; g < end; ++g) {
            const int first = g * group;
            run_group(*arenas[thread], thread, first, std::min(group, batch - first), x, out);
        }
    });
}

void Engine::trace(const Inputs& x, int batch, const Outputs& out,
                   const std::function<void(int, const uint8_t*, size_t)>& tensor) {
    check_batch(batch);
    check_buffers(x, out);
    const ExecutionContext ctx = context(op_memory_->arena(batch), batch, x.data(), out.data());
    for (const auto& op : ops_) {
        op->run(ctx);
        const int written = op->tensors().output;
        if (written >= 0) tensor(written, ctx.tensor(written), op_memory_->tensor_size(written) * batch);
    }
}

std::vector<double> Engine::profile(const Inputs& x, int batch, const Outputs& out, int repeats) {
    check_batch(batch);
    check_buffers(x, out);
    if (repeats < 1) throw std::invalid_argument("repeats must be positive");
    const ExecutionContext ctx = context(op_memory_->arena(batch), batch, x.data(), out.data());
    std::vector<std::vector<double>> times(ops_.size());
    for (int r = 0; r <= repeats; ++r)
        for (size_t i = 0; i < ops_.size(); ++i) {
            const double start = seconds_now();
            ops_[i]->run(ctx);
            if (r > 0) times[i].push_back(seconds_now() - start);
        }
    std::vector<double> medians;
    for (auto& t : times) {
        std::sort(t.begin(), t.end());
        medians.push_back(t[t.size() / 2]);
    }
    return medians;
}

double Engine::time_op(int index, int batch, int repeats) {
    if (index < 0 || index >= op_count()) throw std::out_of_range("op index");
    check_batch(batch);
    if (repeats < 1) throw std::invalid_argument("repeats must be positive");
    const ExecutionContext ctx = context(op_memory_->arena(batch), batch, nullptr, nullptr);
    const Operator& op = *ops_[index];
    uint32_t state = 12345;
    for (int input : op.tensors().inputs) {
        uint8_t* data = ctx.tensor(input);
        for (size_t i = 0; i < op_memory_->tensor_size(input) * batch; ++i) {
            state = state * 1664525u + 1013904223u;
            data[i] = static_cast<uint8_t>(state >> 24);
        }
    }
    op.run(ctx);
    std::vector<double> times;
    for (int r = 0; r < repeats; ++r) {
        const double start = seconds_now();
        op.run(ctx);
        times.push_back(seconds_now() - start);
    }
    std::sort(times.begin(), times.end());
    return times[times.size() / 2];
}

}  // namespace edge
