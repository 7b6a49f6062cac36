// The Python module lightning_edge.runtime._engine, the only file that includes pybind11: it converts the
// plan's dicts and numpy arrays into the engine core's Attributes and ArrayRefs (keeping the arrays alive
// while the engine uses them), and releases the GIL around all compute.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "cpu_features.h"
#include "engine.h"

namespace py = pybind11;

namespace edge {

namespace {

Attributes to_attributes(const py::dict& d);

// The UTF-8 text of a str (or the bytes of a bytes object); false for anything else or unencodable text.
bool text_of(PyObject* o, std::string& text) {
    if (PyBytes_Check(o)) {
        text.assign(PyBytes_AS_STRING(o), static_cast<size_t>(PyBytes_GET_SIZE(o)));
        return true;
    }
    if (!PyUnicode_Check(o)) return false;
    Py_ssize_t size = 0;
    const char* utf8 = PyUnicode_AsUTF8AndSize(o, &size);
    if (!utf8) {
        PyErr_Clear();
        return false;
    }
    text.assign(utf8, static_cast<size_t>(size));
    return true;
}

// A Python value as the engine reads it, following pybind11's casts: an int (or anything with __index__) is
// integral when it fits in int64 and a number when it fits in a double; a float (or anything with
// __float__) is a number; str and bytes are text; a dict nests.
Value to_value(py::handle h) {
    Value v;
    PyObject* o = h.ptr();
    if (PyUnicode_Check(o) || PyBytes_Check(o)) {
        if (text_of(o, v.text)) v.kind = Value::Kind::String;
    } else if (PyDict_Check(o)) {
        v.kind = Value::Kind::Map, v.map = std::make_shared<const Attributes>(to_attributes(h.cast<py::dict>()));
    } else if (!PyFloat_Check(o) && (PyLong_Check(o) || PyIndex_Check(o))) {
        py::object integer = py::reinterpret_steal<py::object>(PyNumber_Index(o));
        if (!integer) {
            PyErr_Clear();
            return v;
        }
        int overflow = 0;
        const long long value = PyLong_AsLongLongAndOverflow(integer.ptr(), &overflow);
        v.integral = overflow == 0 && !(value == -1 && PyErr_Occurred());
        v.integer = v.integral ? value : 0;
        v.number = PyLong_AsDouble(integer.ptr());
        v.kind = PyErr_Occurred() ? Value::Kind::Other : Value::Kind::Number;
        PyErr_Clear();
    } else {
        const double number = PyFloat_AsDouble(o);
        if (number == -1.0 && PyErr_Occurred()) {
            PyErr_Clear();
            return v;
        }
        v.kind = Value::Kind::Number, v.number = number;
    }
    return v;
}

Attributes to_attributes(const py::dict& d) {
    Attributes attrs;
    std::string key;
    for (auto item : d)
        if (PyUnicode_Check(item.first.ptr()) && text_of(item.first.ptr(), key)) attrs.set(key, to_value(item.second));
    return attrs;
}

Dtype dtype_of_array(const py::array& a) {
    if (py::isinstance<py::array_t<uint8_t>>(a)) return Dtype::UInt8;
    if (py::isinstance<py::array_t<int8_t>>(a)) return Dtype::Int8;
    if (py::isinstance<py::array_t<int16_t>>(a)) return Dtype::Int16;
    if (py::isinstance<py::array_t<int32_t>>(a)) return Dtype::Int32;
    if (py::isinstance<py::array_t<float>>(a)) return Dtype::Float32;
    return Dtype::Other;
}

using FloatBatch = py::array_t<float, py::array::c_style | py::array::forcecast>;

std::vector<long> shape_of(const py::array& x) { return std::vector<long>(x.shape(), x.shape() + x.ndim()); }

std::vector<py::ssize_t> to_shape(const std::vector<long>& shape) { return std::vector<py::ssize_t>(shape.begin(), shape.end()); }

// The Python-facing engine: the core plus the numpy arrays its ops point into.
class PyEngine {
  public:
    PyEngine(py::list ops, py::list tensor_sizes, py::dict arrays, int threads, const std::string& kernels, int spin,
             int sharing) {
        if (sharing < 0 || sharing > 2) throw std::invalid_argument("sharing: 0 (dedicated), 1 (shared) or 2 (auto)");
        std::vector<size_t> sizes;
        for (auto size : tensor_sizes) sizes.push_back(size.cast<size_t>());
        std::vector<OpDescription> descriptions;
        for (auto item : ops) {
            Attributes attrs = to_attributes(item.cast<py::dict>());
            std::string kind = attrs.get_string("kind");
            descriptions.push_back({std::move(kind), std::move(attrs)});
        }
        // Only the arrays some op names are converted (and kept alive): a plan's dict holds every tensor.
        ArrayTable table;
        for (const OpDescription& op : descriptions)
            for (const std::string& name : op.attributes.strings()) {
                if (table.count(name) || !arrays.contains(name)) continue;
                ArrayRef ref;
                py::object value = arrays[py::str(name)];
                if (py::isinstance<py::array>(value)) {
                    auto a = py::reinterpret_borrow<py::array>(value);
                    ref.data = a.data(), ref.dtype = dtype_of_array(a), ref.count = static_cast<size_t>(a.size());
                    ref.contiguous = (a.flags() & py::array::c_style) != 0;
                    keep_.push_back(a);
                }
                table[name] = ref;
            }
        engine_ = std::make_unique<Engine>(descriptions, std::move(sizes), table, threads, kernels, spin, static_cast<CpuSharing>(sharing));
    }

    std::string backend() const { return engine_->backend(); }
    int threads() const { return engine_->threads(); }
    int spin() const { return engine_->spin(); }
    int sharing() const { return static_cast<int>(engine_->sharing()); }
    bool contended() const { return engine_->contended(); }
    int batch_group() const { return engine_->batch_group(); }
    void set_batch_group(int samples) { engine_->set_batch_group(samples); }
    bool fusion() const { return engine_->fusion(); }
    void set_fusion(bool on) { engine_->set_fusion(on); }
    int fused_blocks() const { return engine_->fused_blocks(); }
    int output_count() const { return engine_->output_count(); }
    int input_count() const { return engine_->input_count(); }

    // Runs the plan on a float32 NCHW batch; returns the float32 outputs, a list in output order.
    py::list run(const std::vector<FloatBatch>& x) {
        Engine::Inputs in;
        const int batch = inputs(x, in);
        Engine::Outputs out;
        py::list results = outputs(batch, out);
        py::gil_scoped_release release;
        engine_->run(in, batch, out);
        return results;
    }

    // Like run, but also returns every uint8 tensor (NHWC, one array per plan tensor) for layer-by-layer checks.
    py::tuple trace(const std::vector<FloatBatch>& x) {
        Engine::Inputs in;
        const int batch = inputs(x, in);
        Engine::Outputs out;
        py::list results = outputs(batch, out);
        py::list tensors;
        for (int t = 0; t < engine_->tensor_count(); ++t) tensors.append(py::none());
        engine_->trace(in, batch, out, [&](int index, const uint8_t* codes, size_t bytes) {
            py::array_t<uint8_t> copy(static_cast<py::ssize_t>(bytes));
            std::memcpy(copy.mutable_data(), codes, bytes);
            tensors[index] = copy;
        });
        return py::make_tuple(results, tensors);
    }

    std::vector<double> profile(const std::vector<FloatBatch>& x, int repeats) {
        Engine::Inputs in;
        const int batch = inputs(x, in);
        Engine::Outputs out;
        py::list results = outputs(batch, out);
        py::gil_scoped_release release;
        return engine_->profile(in, batch, out, repeats);
    }

    double time_op(int index, int batch, int repeats) {
        py::gil_scoped_release release;
        return engine_->time_op(index, batch, repeats);
    }

  private:
    // The batch of the inputs (one per plan input, each of its shape, all of one batch size), their data added to `in`.
    int inputs(const std::vector<FloatBatch>& x, Engine::Inputs& in) const {
        if (static_cast<int>(x.size()) != engine_->input_count())
            throw std::invalid_argument("the plan has " + std::to_string(engine_->input_count()) + " inputs, " +
                                        std::to_string(x.size()) + " were given");
        int batch = 0;
        for (size_t i = 0; i < x.size(); ++i) {
            const int size = engine_->check_input(shape_of(x[i]), static_cast<int>(i));
            if (i > 0 && size != batch) throw std::invalid_argument("the inputs have different batch sizes");
            batch = size;
            in.push_back(x[i].data());
        }
        return batch;
    }

    // One new float32 array per output at `batch`, its buffer added to `out`.
    py::list outputs(int batch, Engine::Outputs& out) const {
        py::list results;
        for (int i = 0; i < engine_->output_count(); ++i) {
            py::array_t<float> result(to_shape(engine_->output_shape(batch, i)));
            out.push_back(result.mutable_data());
            results.append(result);
        }
        return results;
    }

    std::vector<py::array> keep_;
    std::unique_ptr<Engine> engine_;
};

}  // namespace
}  // namespace edge

PYBIND11_MODULE(_engine, m) {
    m.doc() = "lightning-edge INT8 runtime kernels (see lightning_edge.runtime.session)";
    py::class_<edge::PyEngine>(m, "Engine")
        .def(py::init<py::list, py::list, py::dict, int, const std::string&, int, int>(), py::arg("ops"),
             py::arg("tensor_sizes"), py::arg("arrays"), py::arg("threads"), py::arg("kernels") = "auto",
             py::arg("spin") = edge::ThreadPool::kDefaultSpin, py::arg("sharing") = static_cast<int>(edge::CpuSharing::kAuto))
        .def("run", &edge::PyEngine::run, py::arg("x"))
        .def("trace", &edge::PyEngine::trace, py::arg("x"))
        .def("profile", &edge::PyEngine::profile, py::arg("x"), py::arg("repeats") = 10)
        .def("time_op", &edge::PyEngine::time_op, py::arg("index"), py::arg("batch"), py::arg("repeats") = 20)
        .def_property_readonly("backend", &edge::PyEngine::backend)
        .def_property_readonly("threads", &edge::PyEngine::threads)
        .def_property_readonly("spin", &edge::PyEngine::spin)
        .def_property_readonly("sharing", &edge::PyEngine::sharing)
        .def_property_readonly("contended", &edge::PyEngine::contended)
        .def_property("batch_group", &edge::PyEngine::batch_group, &edge::PyEngine::set_batch_group)
        .def_property("fusion", &edge::PyEngine::fusion, &edge::PyEngine::set_fusion)
        .def_property_readonly("fused_blocks", &edge::PyEngine::fused_blocks)
        .def_property_readonly("output_count", &edge::PyEngine::output_count)
        .def_property_readonly("input_count", &edge::PyEngine::input_count);
    m.def("int8_peak_ops", [](int threads, double seconds) {
        py::gil_scoped_release release;
        return edge::int8_peak_ops(threads, seconds);
    }, py::arg("threads"), py::arg("seconds") = 0.1, "Measured int8 peak (operations per second) on `threads` threads.");
    m.def("resolve_kernels", [](const std::string& kernels) { return std::string(edge::choose_backend(kernels).name); },
          py::arg("kernels") = "auto", "The kernel path `kernels` ('auto' included) picks on this CPU.");
    m.def("available_kernels", [] { return edge::available_kernels(); });
    m.def("cpu_features", [] {
        py::dict flags;
        for (const auto& [name, present] : edge::cpu_features().named()) flags[py::str(name)] = present;
        return flags;
    }, "The instruction sets this CPU has, detected once: {'avx2': True, 'avx512vnni': False, ...}.");
}
