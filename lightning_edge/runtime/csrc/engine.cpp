// The runtime's executor: a compiled plan (ops over uint8 NHWC tensors) run on a thread pool, with every
// buffer planned once per batch size. Python builds it from a checked .edge file (session.py) and passes
// numpy arrays; there is no torch here.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <cstdlib>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "conv_driver.h"
#include "thread_pool.h"

namespace py = pybind11;

namespace edge {


namespace {

enum class Kind { Quantize, Conv, Depthwise, Add, AveragePool, MaxPool, Dequantize };

struct Grid {
    float scale;
    int zero, low, high;
};

struct Op {
    Kind kind;
    std::vector<int> inputs;
    int output = -1;
    ConvOp conv{};
    DepthwiseOp depthwise{};
    Grid in{}, in2{}, out{};
    float multiplier = 0;  // average pool
    int channels = 0, height = 0, width = 0, out_h = 0, out_w = 0;
    int kernel_h = 0, kernel_w = 0, stride_h = 1, stride_w = 1, pad_top = 0, pad_left = 0;
};

struct Arena {
    std::vector<std::vector<uint8_t>> slots;
    std::vector<int16_t> wide;  // the widened input of the conv running now (the largest any conv needs)
};

int get_int(const py::dict& d, const char* key) {
    if (!d.contains(key)) throw std::invalid_argument(std::string("plan op is missing '") + key + "'");
    return d[key].cast<int>();
}

float get_float(const py::dict& d, const char* key) {
    if (!d.contains(key)) throw std::invalid_argument(std::string("plan op is missing '") + key + "'");
    return d[key].cast<float>();
}

Grid get_grid(const py::dict& d, const char* key) {
    if (!d.contains(key)) throw std::invalid_argument(std::string("plan op is missing grid '") + key + "'");
    py::dict g = d[key].cast<py::dict>();
    Grid grid{get_float(g, "scale"), get_int(g, "zero"), get_int(g, "low"), get_int(g, "high")};
    if (grid.low < 0 || grid.high > 255 || grid.low > grid.high || grid.zero < 0 || grid.zero > 255)
        throw std::invalid_argument(std::string("grid '") + key + "' is outside uint8");
    return grid;
}

// sums[c] += codes[c]; restrict lets the compiler vectorize it (uint8 may otherwise alias the sums).
void add_codes(int32_t* __restrict sums, const uint8_t* __restrict codes, int count) {
    for (int c = 0; c < count; ++c) sums[c] += codes[c];
}

// The window fields of a conv, depthwise conv or max pool (any struct with them), read and checked:
// positive kernel and stride, each padding smaller than the kernel, at most kMaxTaps taps.
template <class Target>
void read_window(const py::dict& d, Target& t, const char* what) {
    t.kernel_h = get_int(d, "kernel_h"), t.kernel_w = get_int(d, "kernel_w");
    t.stride_h = get_int(d, "stride_h"), t.stride_w = get_int(d, "stride_w");
    t.pad_top = get_int(d, "pad_top"), t.pad_left = get_int(d, "pad_left");
    for (int v : {t.kernel_h, t.kernel_w, t.stride_h, t.stride_w})
        if (v <= 0 || v > (1 << 16)) throw std::invalid_argument(std::string(what) + ": kernel and stride must be positive");
    if (static_cast<long>(t.kernel_h) * t.kernel_w > kMaxTaps) throw std::invalid_argument(std::string(what) + ": at most 64 kernel taps");
    if (t.pad_top < 0 || t.pad_left < 0 || t.pad_top >= t.kernel_h || t.pad_left >= t.kernel_w)
        throw std::invalid_argument(std::string(what) + ": padding out of range");
}

double seconds_now() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

class Engine {
  public:
    Engine(py::list ops, py::list tensor_sizes, py::dict arrays, int threads, const std::string& kernels)
        : pool_(threads), backend_(choose_backend(kernels)) {
        for (auto size : tensor_sizes) tensor_sizes_.push_back(size.cast<size_t>());
        for (auto item : ops) ops_.push_back(parse(item.cast<py::dict>(), arrays));
        if (ops_.empty() || ops_.front().kind != Kind::Quantize || ops_.back().kind != Kind::Dequantize)
            throw std::invalid_argument("a plan starts with its one quantize op and ends with its one dequantize op");
        for (size_t i = 1; i + 1 < ops_.size(); ++i)
            if (ops_[i].kind == Kind::Quantize || ops_[i].kind == Kind::Dequantize)
                throw std::invalid_argument("a plan has one quantize op (first) and one dequantize op (last)");
        plan_slots();
        for (const Op& op : ops_)
            if (op.kind == Kind::Conv) wide_per_sample_ = std::max(wide_per_sample_, wide_elements(op.conv, 1));
        winograd_buffers_.resize(static_cast<size_t>(pool_.size()) * winograd_scratch_);
        int pooled_channels = 0;
        for (const Op& op : ops_)
            if (op.kind == Kind::AveragePool) pooled_channels = std::max(pooled_channels, op.channels);
        pool_sums_.resize(static_cast<size_t>(pool_.size()) * pooled_channels);
    }

    std::string backend() const { return backend_->name; }
    int threads() const { return pool_.size(); }

    // Runs the plan on a float32 NCHW batch; returns the dequantized float32 output.
    py::array_t<float> run(py::array_t<float, py::array::c_style | py::array::forcecast> x) {
        const int batch = check_input(x);
        Arena& arena = arena_for(batch);
        py::array_t<float> result(output_shape(batch));
        {
            py::gil_scoped_release release;
            for (const Op& op : ops_) execute(op, arena, batch, x.data(), result.mutable_data());
        }
        return result;
    }

    // Like run, but also returns every uint8 tensor (NHWC, one array per plan tensor) for layer-by-layer checks.
    py::tuple trace(py::array_t<float, py::array::c_style | py::array::forcecast> x) {
        const int batch = check_input(x);
        Arena& arena = arena_for(batch);
        py::array_t<float> result(output_shape(batch));
        py::list tensors;
        for (size_t t = 0; t < tensor_sizes_.size(); ++t) tensors.append(py::none());
        for (const Op& op : ops_) {
            execute(op, arena, batch, x.data(), result.mutable_data());
            if (op.output >= 0) {
                py::array_t<uint8_t> copy(static_cast<py::ssize_t>(tensor_sizes_[op.output] * batch));
                std::memcpy(copy.mutable_data(), buffer(arena, op.output), tensor_sizes_[op.output] * batch);
                tensors[op.output] = copy;
            }
        }
        return py::make_tuple(result, tensors);
    }

    // Median seconds each op takes inside whole runs of x (`repeats` runs after one warm-up): per-layer cost.
    std::vector<double> profile(py::array_t<float, py::array::c_style | py::array::forcecast> x, int repeats) {
        const int batch = check_input(x);
        if (repeats < 1) throw std::invalid_argument("repeats must be positive");
        Arena& arena = arena_for(batch);
        py::array_t<float> result(output_shape(batch));
        std::vector<std::vector<double>> times(ops_.size());
        {
            py::gil_scoped_release release;
            for (int r = 0; r <= repeats; ++r)
                for (size_t i = 0; i < ops_.size(); ++i) {
                    const double start = seconds_now();
                    execute(ops_[i], arena, batch, x.data(), result.mutable_data());
                    if (r > 0) times[i].push_back(seconds_now() - start);
                }
        }
        std::vector<double> medians;
        for (auto& t : times) {
            std::sort(t.begin(), t.end());
            medians.push_back(t[t.size() / 2]);
        }
        return medians;
    }

    // Seconds per call of op `index` alone at `batch`, the median of `repeats` after a warm-up, on
    // deterministic pseudo-random input codes: what primitive selection compares.
    double time_op(int index, int batch, int repeats) {
        if (index < 0 || index >= static_cast<int>(ops_.size())) throw std::out_of_range("op index");
        if (batch < 1 || repeats < 1) throw std::invalid_argument("batch and repeats must be positive");
        Arena& arena = arena_for(batch);
        const Op& op = ops_[index];
        uint32_t state = 12345;
        for (int input : op.inputs) {
            uint8_t* data = buffer(arena, input);
            for (size_t i = 0; i < tensor_sizes_[input] * batch; ++i) {
                state = state * 1664525u + 1013904223u;
                data[i] = static_cast<uint8_t>(state >> 24);
            }
        }
        std::vector<double> times;
        py::gil_scoped_release release;
        execute(op, arena, batch, nullptr, nullptr);
        for (int r = 0; r < repeats; ++r) {
            const double start = seconds_now();
            execute(op, arena, batch, nullptr, nullptr);
            times.push_back(seconds_now() - start);
        }
        std::sort(times.begin(), times.end());
        return times[times.size() / 2];
    }

  private:
  public:
    static const Backend* choose_backend(const std::string& kernels) {
        if (kernels == "scalar") return &scalar_backend();
        if (kernels == "avx512") {
            if (!avx512_supported())
                throw std::invalid_argument("kernels='avx512' needs an x86-64 CPU with AVX-512 VNNI; use 'auto', 'avx2' or 'scalar'");
            return avx512_backend();
        }
        if (kernels == "avx2") {
            if (!avx2_backend() || !__builtin_cpu_supports("avx2"))
                throw std::invalid_argument("kernels='avx2' needs an x86-64 CPU with AVX2; use 'auto' or 'scalar'");
            return avx2_backend();
        }
        if (kernels == "neon") {
            if (!neon_backend()) throw std::invalid_argument("kernels='neon' needs an aarch64 build; use 'auto' or 'scalar'");
            return neon_backend();
        }
        if (kernels != "auto")
            throw std::invalid_argument("kernels must be 'auto', 'avx512', 'avx2', 'neon' or 'scalar', not '" + kernels + "'");
        if (avx512_supported()) return avx512_backend();
#if defined(__x86_64__) || defined(_M_X64)
        if (avx2_backend() && __builtin_cpu_supports("avx2")) return avx2_backend();
#endif
        if (neon_backend()) return neon_backend();
        return &scalar_backend();
    }

    static bool avx512_supported() {
#if defined(__x86_64__) || defined(_M_X64)
        return avx512_backend() && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("avx512f") &&
               __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
#else
        return false;
#endif
    }

  private:
    template <class T>
    const T* array(py::dict arrays, const py::dict& d, const char* key, size_t count) {
        if (!d.contains(key)) throw std::invalid_argument(std::string("plan op is missing array '") + key + "'");
        const std::string name = d[key].cast<std::string>();
        if (!arrays.contains(name)) throw std::invalid_argument("plan names a missing tensor '" + name + "'");
        auto a = arrays[name.c_str()].cast<py::array>();
        if (!py::isinstance<py::array_t<T>>(a) || !(a.flags() & py::array::c_style))
            throw std::invalid_argument("tensor '" + name + "' has the wrong dtype or layout");
        if (static_cast<size_t>(a.size()) != count)
            throw std::invalid_argument("tensor '" + name + "' has " + std::to_string(a.size()) + " elements, the plan needs " + std::to_string(count));
        keep_.push_back(a);
        return static_cast<const T*>(a.data());
    }

    int tensor_index(const py::dict& d, const char* key, size_t expected) const {
        const int t = get_int(d, key);
        if (t < 0 || t >= static_cast<int>(tensor_sizes_.size())) throw std::invalid_argument(std::string("tensor index '") + key + "' out of range");
        if (tensor_sizes_[t] != expected)
            throw std::invalid_argument(std::string("tensor '") + key + "' has " + std::to_string(tensor_sizes_[t]) +
                                        " elements per sample, the op needs " + std::to_string(expected));
        return t;
    }

    static void check_positive(std::initializer_list<int> values, const char* what) {
        for (int v : values)
            if (v <= 0 || v > (1 << 24)) throw std::invalid_argument(std::string(what) + ": dimension out of range");
    }

    Op parse(const py::dict& d, py::dict arrays) {
        Op op;
        const std::string kind = d["kind"].cast<std::string>();
        if (kind == "quantize" || kind == "dequantize") {
            op.kind = kind == "quantize" ? Kind::Quantize : Kind::Dequantize;
            op.channels = get_int(d, "channels"), op.height = get_int(d, "height"), op.width = get_int(d, "width");
            check_positive({op.channels, op.height, op.width}, kind.c_str());
            const size_t size = static_cast<size_t>(op.channels) * op.height * op.width;
            if (op.kind == Kind::Quantize) {
                op.out = get_grid(d, "grid");
                op.output = tensor_index(d, "output", size);
            } else {
                op.in = get_grid(d, "grid");
                op.inputs = {tensor_index(d, "input", size)};
            }
        } else if (kind == "conv") {
            op.kind = Kind::Conv;
            ConvOp& c = op.conv;
            c.in_h = get_int(d, "in_h"), c.in_w = get_int(d, "in_w"), c.in_c = get_int(d, "in_c");
            c.out_h = get_int(d, "out_h"), c.out_w = get_int(d, "out_w"), c.out_c = get_int(d, "out_c");
            read_window(d, c, "conv");
            c.groups = get_int(d, "groups"), c.block = get_int(d, "block");
            check_positive({c.in_h, c.in_w, c.in_c, c.out_h, c.out_w, c.out_c, c.groups}, "conv");
            if (c.in_c % c.groups || c.out_c % c.groups) throw std::invalid_argument("conv: channels do not divide into groups");
            if (c.block != 8 && c.block != 16 && !(c.block == 32 && d.contains("layout")))
                throw std::invalid_argument("conv: block must be 8 or 16 (32 in the quads layout)");
            if ((c.out_h - 1) * static_cast<long>(c.stride_h) - c.pad_top + c.kernel_h > c.in_h + c.kernel_h ||
                (c.out_w - 1) * static_cast<long>(c.stride_w) - c.pad_left + c.kernel_w > c.in_w + c.kernel_w)
                throw std::invalid_argument("conv: output size does not fit the input");
            if (static_cast<long>(c.out_h) * c.out_w * c.out_c > (1L << 30) || static_cast<long>(c.in_h) * c.in_w * c.in_c > (1L << 30))
                throw std::invalid_argument("conv: tensor too large");
            c.quads = d.contains("layout") && d["layout"].cast<std::string>() == "quads";
            if (c.quads && !backend_->conv8) throw std::invalid_argument("conv: the quads layout needs kernels='avx512'");
            c.winograd = d.contains("algorithm") && d["algorithm"].cast<std::string>() == "winograd";
            if (c.winograd && c.quads) throw std::invalid_argument("conv: Winograd runs on the int16 layout");
            if (c.winograd && (c.kernel_h != 3 || c.kernel_w != 3 || c.stride_h != 1 || c.stride_w != 1))
                throw std::invalid_argument("conv: Winograd needs a 3x3 kernel with stride 1");
            const size_t weight_count = derive_conv_fields(c);
            if (c.winograd) winograd_scratch_ = std::max(winograd_scratch_, winograd_scratch_bytes(c));
            if (c.quads) c.weights8 = array<int8_t>(arrays, d, "weights", weight_count);
            else c.weights = array<int16_t>(arrays, d, "weights", weight_count);
            c.bias = array<int32_t>(arrays, d, "bias", c.out_c);
            c.multiplier = array<float>(arrays, d, "multiplier", c.out_c);
            op.in = get_grid(d, "input_grid"), op.out = get_grid(d, "output_grid");
            c.input_zero = op.in.zero, c.output_zero = op.out.zero, c.low = op.out.low, c.high = op.out.high;
            op.inputs = {tensor_index(d, "input", static_cast<size_t>(c.in_h) * c.in_w * c.in_c)};
            const size_t out_size = static_cast<size_t>(c.out_h) * c.out_w * c.out_c;
            c.residual = d.contains("skip");
            if (c.residual) {
                op.inputs.push_back(tensor_index(d, "skip", out_size));
                op.in2 = get_grid(d, "skip_grid");
                const Grid sum = get_grid(d, "sum_grid");
                c.conv_scale = op.out.scale, c.skip_scale = op.in2.scale, c.sum_scale = sum.scale;
                c.skip_zero = op.in2.zero, c.sum_zero = sum.zero, c.sum_low = sum.low, c.sum_high = sum.high;
            }
            op.output = tensor_index(d, "output", out_size);
        } else if (kind == "depthwise") {
            op.kind = Kind::Depthwise;
            DepthwiseOp& c = op.depthwise;
            c.in_h = get_int(d, "in_h"), c.in_w = get_int(d, "in_w"), c.channels = get_int(d, "channels");
            c.out_h = get_int(d, "out_h"), c.out_w = get_int(d, "out_w");
            read_window(d, c, "depthwise");
            check_positive({c.in_h, c.in_w, c.channels, c.out_h, c.out_w}, "depthwise");
            c.weights = array<int32_t>(arrays, d, "weights", static_cast<size_t>(c.kernel_h) * c.kernel_w * c.channels);
            c.bias = array<int32_t>(arrays, d, "bias", c.channels);
            c.multiplier = array<float>(arrays, d, "multiplier", c.channels);
            op.in = get_grid(d, "input_grid"), op.out = get_grid(d, "output_grid");
            c.input_zero = op.in.zero, c.output_zero = op.out.zero, c.low = op.out.low, c.high = op.out.high;
            op.inputs = {tensor_index(d, "input", static_cast<size_t>(c.in_h) * c.in_w * c.channels)};
            op.output = tensor_index(d, "output", static_cast<size_t>(c.out_h) * c.out_w * c.channels);
        } else if (kind == "add") {
            op.kind = Kind::Add;
            const int size = get_int(d, "size");
            check_positive({size}, "add");
            op.inputs = {tensor_index(d, "input", size), tensor_index(d, "skip", size)};
            op.in = get_grid(d, "input_grid"), op.in2 = get_grid(d, "skip_grid"), op.out = get_grid(d, "output_grid");
            op.output = tensor_index(d, "output", size);
        } else if (kind == "average_pool") {
            op.kind = Kind::AveragePool;
            op.channels = get_int(d, "channels"), op.height = get_int(d, "height"), op.width = get_int(d, "width");
            check_positive({op.channels, op.height, op.width}, "average_pool");
            op.multiplier = get_float(d, "multiplier");
            op.in = get_grid(d, "input_grid"), op.out = get_grid(d, "output_grid");
            op.inputs = {tensor_index(d, "input", static_cast<size_t>(op.channels) * op.height * op.width)};
            op.output = tensor_index(d, "output", op.channels);
        } else if (kind == "max_pool") {
            op.kind = Kind::MaxPool;
            op.channels = get_int(d, "channels"), op.height = get_int(d, "height"), op.width = get_int(d, "width");
            op.out_h = get_int(d, "out_h"), op.out_w = get_int(d, "out_w");
            read_window(d, op, "max_pool");
            check_positive({op.channels, op.height, op.width, op.out_h, op.out_w}, "max_pool");
            op.inputs = {tensor_index(d, "input", static_cast<size_t>(op.channels) * op.height * op.width)};
            op.output = tensor_index(d, "output", static_cast<size_t>(op.channels) * op.out_h * op.out_w);
        } else {
            throw std::invalid_argument("unknown op kind '" + kind + "'");
        }
        return op;
    }

    // Each tensor gets a slot; a slot is reused once every reader of its tensor has run (never by the
    // reading op's own output). Sizes are per sample; arenas multiply them by the batch.
    void plan_slots() {
        const int count = static_cast<int>(tensor_sizes_.size());
        std::vector<int> last_use(count, -1), producer(count, -1);
        for (int i = 0; i < static_cast<int>(ops_.size()); ++i) {
            for (int t : ops_[i].inputs) last_use[t] = i;
            if (ops_[i].output >= 0) {
                if (producer[ops_[i].output] >= 0) throw std::invalid_argument("plan writes a tensor twice");
                producer[ops_[i].output] = i;
            }
        }
        for (int i = 0; i < static_cast<int>(ops_.size()); ++i)
            for (int t : ops_[i].inputs)
                if (producer[t] < 0 || producer[t] >= i) throw std::invalid_argument("plan reads a tensor before it is written");
        slot_of_.assign(count, -1);
        std::vector<int> free_slots;
        for (int i = 0; i < static_cast<int>(ops_.size()); ++i) {
            const int t = ops_[i].output;
            if (t >= 0) {
                int best = -1;
                for (size_t f = 0; f < free_slots.size(); ++f)
                    if (best < 0 || std::abs(static_cast<long>(slot_sizes_[free_slots[f]]) - static_cast<long>(tensor_sizes_[t])) <
                                        std::abs(static_cast<long>(slot_sizes_[free_slots[best]]) - static_cast<long>(tensor_sizes_[t])))
                        best = static_cast<int>(f);
                if (best >= 0) {
                    slot_of_[t] = free_slots[best];
                    slot_sizes_[slot_of_[t]] = std::max(slot_sizes_[slot_of_[t]], tensor_sizes_[t]);
                    free_slots.erase(free_slots.begin() + best);
                } else {
                    slot_of_[t] = static_cast<int>(slot_sizes_.size());
                    slot_sizes_.push_back(tensor_sizes_[t]);
                }
            }
            for (int input : ops_[i].inputs)
                if (last_use[input] == i && std::find(free_slots.begin(), free_slots.end(), slot_of_[input]) == free_slots.end())
                    free_slots.push_back(slot_of_[input]);
        }
    }

    Arena& arena_for(int batch) {
        auto found = arenas_.find(batch);
        if (found != arenas_.end()) return found->second;
        if (arenas_.size() >= 8) arenas_.erase(arenas_.begin());  // bound memory across many batch sizes
        Arena& arena = arenas_[batch];
        for (size_t size : slot_sizes_) arena.slots.emplace_back(size * batch + 64);
        arena.wide.resize(wide_per_sample_ * batch + 32);
        return arena;
    }

    uint8_t* buffer(Arena& arena, int tensor) { return arena.slots[slot_of_[tensor]].data(); }

    int check_input(const py::array& x) const {
        const Op& first = ops_.front();
        if (x.ndim() != 4 || x.shape(1) != first.channels || x.shape(2) != first.height || x.shape(3) != first.width)
            throw std::invalid_argument("input must be float32 (batch, " + std::to_string(first.channels) + ", " +
                                        std::to_string(first.height) + ", " + std::to_string(first.width) + ")");
        if (x.shape(0) < 1 || x.shape(0) > (1 << 20)) throw std::invalid_argument("batch size must be at least 1");
        return static_cast<int>(x.shape(0));
    }

    std::vector<py::ssize_t> output_shape(int batch) const {
        const Op& last = ops_.back();
        if (last.height == 1 && last.width == 1) return {batch, last.channels};
        return {batch, last.channels, last.height, last.width};
    }

    // Splits [0, count) into the pool's contiguous shares and runs body(begin, end, thread) on each.
    template <class Body>
    void parallel(int count, int grain, Body body) {
        const int threads = std::min(pool_.size(), std::max(1, count / std::max(grain, 1)));
        if (threads <= 1) {
            body(0, count, 0);
            return;
        }
        pool_.run([&](int t) {
            if (t >= threads) return;
            const int begin = static_cast<int>(static_cast<long>(count) * t / threads);
            const int end = static_cast<int>(static_cast<long>(count) * (t + 1) / threads);
            body(begin, end, t);
        });
    }

    // A conv's work shared out: whole tiles of `tile` pixels per thread when there are enough of them,
    // else (a small image, a linear layer) the (group, block) columns.
    template <class Run>
    void split_conv(int pixels, int tile, int columns, Run run) {
        const int tiles = (pixels + tile - 1) / tile;
        if (tiles >= 2 * pool_.size() || columns < pool_.size())
            parallel(tiles, 1, [&](int begin, int end, int) { run(Range{begin * tile, std::min(end * tile, pixels), 0, columns}); });
        else
            parallel(columns, 1, [&](int begin, int end, int) { run(Range{0, pixels, begin, end}); });
    }

    void execute(const Op& op, Arena& arena, int batch, const float* x, float* result) {
        switch (op.kind) {
            case Kind::Quantize: {
                uint8_t* out = buffer(arena, op.output);
                const int plane = op.height * op.width;
                if (!x) return;
                parallel(batch * op.channels, 1, [&](int begin, int end, int) {
                    for (int index = begin; index < end; ++index) {  // one (image, channel) plane, NCHW -> NHWC
                        const int n = index / op.channels, c = index % op.channels;
                        const float* src = x + static_cast<size_t>(index) * plane;
                        uint8_t* dst = out + static_cast<size_t>(n) * plane * op.channels + c;
                        for (int i = 0; i < plane; ++i)
                            dst[static_cast<size_t>(i) * op.channels] =
                                static_cast<uint8_t>(round_onto_grid(src[i] / op.out.scale, op.out.zero, op.out.low, op.out.high));
                    }
                });
                return;
            }
            case Kind::Dequantize: {
                const uint8_t* in = buffer(arena, op.inputs[0]);
                if (!result) return;
                const int plane = op.height * op.width;
                for (int n = 0; n < batch; ++n)
                    for (int c = 0; c < op.channels; ++c)
                        for (int i = 0; i < plane; ++i)
                            result[(static_cast<size_t>(n) * op.channels + c) * plane + i] =
                                static_cast<float>(in[(static_cast<size_t>(n) * plane + i) * op.channels + c] - op.in.zero) * op.in.scale;
                return;
            }
            case Kind::Conv: {
                const ConvOp& c = op.conv;
                const uint8_t* in = buffer(arena, op.inputs[0]);
                const uint8_t* skip = c.residual ? buffer(arena, op.inputs[1]) : nullptr;
                uint8_t* out = buffer(arena, op.output);
                int16_t* wide = arena.wide.data();
                const int pixels = batch * c.out_h * c.out_w;
                const int columns = c.groups * c.blocks;
                if (c.quads) {
                    uint8_t* codes = reinterpret_cast<uint8_t*>(wide);
                    parallel(batch * c.wide_h, 8, [&](int begin, int end, int) { widen_rows_u8(c, in, codes, begin, end); });
                    split_conv(pixels, kQuadTilePixels, columns, [&](Range range) { backend_->conv8(c, codes, skip, out, range); });
                    return;
                }
                parallel(batch * c.wide_h, 8, [&](int begin, int end, int) { backend_->widen(c, in, wide, begin, end); });
                if (c.winograd) {
                    parallel(batch * c.tiles_h * c.tiles_w, 1, [&](int begin, int end, int t) {
                        backend_->winograd(c, wide, skip, out, begin, end, winograd_scratch_buffer(t));
                    });
                    return;
                }
                split_conv(pixels, kTilePixels, columns, [&](Range range) { backend_->conv(c, wide, skip, out, range); });
                return;
            }
            case Kind::Depthwise: {
                const uint8_t* in = buffer(arena, op.inputs[0]);
                uint8_t* out = buffer(arena, op.output);
                const int pixels = batch * op.depthwise.out_h * op.depthwise.out_w;
                parallel(pixels, 4, [&](int begin, int end, int) { backend_->depthwise(op.depthwise, in, out, begin, end); });
                return;
            }
            case Kind::Add: {
                const uint8_t* a = buffer(arena, op.inputs[0]);
                const uint8_t* b = buffer(arena, op.inputs[1]);
                uint8_t* out = buffer(arena, op.output);
                const size_t size = tensor_sizes_[op.output] * batch;
                for (size_t i = 0; i < size; ++i) {
                    const float sum = static_cast<float>(a[i] - op.in.zero) * op.in.scale + static_cast<float>(b[i] - op.in2.zero) * op.in2.scale;
                    out[i] = static_cast<uint8_t>(round_onto_grid(sum / op.out.scale, op.out.zero, op.out.low, op.out.high));
                }
                return;
            }
            case Kind::AveragePool: {
                const uint8_t* in = buffer(arena, op.inputs[0]);
                uint8_t* out = buffer(arena, op.output);
                const int plane = op.height * op.width;
                parallel(batch, 1, [&](int begin, int end, int t) {
                    int32_t* sums = pool_sums_.data() + static_cast<size_t>(t) * op.channels;
                    for (int n = begin; n < end; ++n) {
                        std::fill(sums, sums + op.channels, 0);
                        const uint8_t* image = in + static_cast<size_t>(n) * plane * op.channels;
                        for (int i = 0; i < plane; ++i) add_codes(sums, image + static_cast<size_t>(i) * op.channels, op.channels);
                        const int32_t offset = op.in.zero * plane;  // sum(q - z) = sum(q) - z * count
                        for (int c = 0; c < op.channels; ++c)
                            out[static_cast<size_t>(n) * op.channels + c] = static_cast<uint8_t>(round_onto_grid(
                                static_cast<float>(sums[c] - offset) * op.multiplier, op.out.zero, op.out.low, op.out.high));
                    }
                });
                return;
            }
            case Kind::MaxPool: {
                const uint8_t* in = buffer(arena, op.inputs[0]);
                uint8_t* out = buffer(arena, op.output);
                for (int n = 0; n < batch; ++n)
                    for (int oh = 0; oh < op.out_h; ++oh)
                        for (int ow = 0; ow < op.out_w; ++ow) {
                            uint8_t* dst = out + ((static_cast<size_t>(n) * op.out_h + oh) * op.out_w + ow) * op.channels;
                            std::fill(dst, dst + op.channels, 0);
                            for (int ky = 0; ky < op.kernel_h; ++ky) {
                                const int ih = oh * op.stride_h - op.pad_top + ky;
                                if (ih < 0 || ih >= op.height) continue;
                                for (int kx = 0; kx < op.kernel_w; ++kx) {
                                    const int iw = ow * op.stride_w - op.pad_left + kx;
                                    if (iw < 0 || iw >= op.width) continue;
                                    const uint8_t* src = in + ((static_cast<size_t>(n) * op.height + ih) * op.width + iw) * op.channels;
                                    for (int c = 0; c < op.channels; ++c) dst[c] = std::max(dst[c], src[c]);
                                }
                            }
                        }
                return;
            }
        }
    }

    ThreadPool pool_;
    const Backend* backend_;
    std::vector<size_t> tensor_sizes_;
    std::vector<Op> ops_;
    std::vector<py::array> keep_;
    std::vector<int> slot_of_;
    std::vector<size_t> slot_sizes_;
    std::map<int, Arena> arenas_;
    size_t wide_per_sample_ = 0;
    size_t winograd_scratch_ = 0;
    std::vector<uint8_t> winograd_buffers_;

    void* winograd_scratch_buffer(int thread) { return winograd_buffers_.data() + static_cast<size_t>(thread) * winograd_scratch_; }
    std::vector<int32_t> pool_sums_;
};

}  // namespace
}  // namespace edge

PYBIND11_MODULE(_engine, m) {
    m.doc() = "lightning-edge INT8 runtime kernels (see lightning_edge.runtime.session)";
    py::class_<edge::Engine>(m, "Engine")
        .def(py::init<py::list, py::list, py::dict, int, const std::string&>(), py::arg("ops"), py::arg("tensor_sizes"),
             py::arg("arrays"), py::arg("threads"), py::arg("kernels") = "auto")
        .def("run", &edge::Engine::run, py::arg("x"))
        .def("trace", &edge::Engine::trace, py::arg("x"))
        .def("profile", &edge::Engine::profile, py::arg("x"), py::arg("repeats") = 10)
        .def("time_op", &edge::Engine::time_op, py::arg("index"), py::arg("batch"), py::arg("repeats") = 20)
        .def_property_readonly("backend", &edge::Engine::backend)
        .def_property_readonly("threads", &edge::Engine::threads);
    m.def("int8_peak_ops", [](int threads, double seconds) {
        // Measured int8 peak of this CPU on `threads` threads: 2 x multiply-adds per second.
        const bool vnni = edge::Engine::avx512_supported();
#if defined(__x86_64__) || defined(_M_X64)
        const bool avx2 = edge::avx2_backend() && __builtin_cpu_supports("avx2");
#else
        const bool avx2 = false;
#endif
        if (!vnni && !avx2) return 0.0;
        auto peak = vnni ? edge::avx512_peak_macs : edge::avx2_peak_macs;
        peak(1000000);  // warm up: clocks and the wide units
        edge::ThreadPool pool(threads);
        const long iterations = 20000000;
        std::vector<double> done(pool.size());
        double elapsed;
        {
            py::gil_scoped_release release;
            const double start = edge::seconds_now();
            pool.run([&](int t) { done[t] = peak(static_cast<long>(iterations * seconds)); });
            elapsed = edge::seconds_now() - start;
        }
        double total = 0;
        for (double d : done) total += d;
        return 2.0 * total / elapsed;
    }, py::arg("threads"), py::arg("seconds") = 0.1, "Measured int8 peak (operations per second) on `threads` threads.");
    m.def("resolve_kernels", [](const std::string& kernels) { return std::string(edge::Engine::choose_backend(kernels)->name); },
          py::arg("kernels") = "auto", "The kernel path `kernels` ('auto' included) picks on this CPU.");
    m.def("available_kernels", [] {
        std::vector<std::string> names{"scalar"};
#if defined(__x86_64__) || defined(_M_X64)
        if (edge::avx2_backend() && __builtin_cpu_supports("avx2")) names.push_back("avx2");
#endif
        if (edge::Engine::avx512_supported()) names.push_back("avx512");
        if (edge::neon_backend()) names.push_back("neon");
        return names;
    });
}
