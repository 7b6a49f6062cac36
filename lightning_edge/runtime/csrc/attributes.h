// One plan op as plain C++: the fields of its Python dict (numbers, strings, nested grids) and the named
// arrays the plan points into. The bindings build these from the dicts session.py passes; the native test
// harness builds them by hand. Every getter checks what it reads and throws std::invalid_argument naming the
// field, so a bad .edge file is a Python exception (EdgeFormatError), never a crash.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace edge {

// Requantization grid of a uint8 tensor: real = (code - zero) * scale, codes clamped to [low, high].
struct Grid {
    float scale;
    int zero, low, high;
};

// Element types the kernels read; Other is anything else (it fails every array check).
enum class Dtype { UInt8, Int8, Int16, Int32, Float32, Other };

template <class T>
constexpr Dtype dtype_of();
template <>
constexpr Dtype dtype_of<uint8_t>() { return Dtype::UInt8; }
template <>
constexpr Dtype dtype_of<int8_t>() { return Dtype::Int8; }
template <>
constexpr Dtype dtype_of<int16_t>() { return Dtype::Int16; }
template <>
constexpr Dtype dtype_of<int32_t>() { return Dtype::Int32; }
template <>
constexpr Dtype dtype_of<float>() { return Dtype::Float32; }

// A named array the plan refers to; its owner (a numpy array, a std::vector) outlives the engine.
struct ArrayRef {
    const void* data = nullptr;
    Dtype dtype = Dtype::Other;
    size_t count = 0;
    bool contiguous = true;  // C order: what the kernels index
};

// Every array a plan may name, by name.
using ArrayTable = std::map<std::string, ArrayRef>;

class Attributes;

// One field's value. Python's int and float both convert to a number (as pybind11's casts do), an int
// only when it is integral and fits; strings and nested dicts keep their own kind; anything else is Other.
struct Value {
    enum class Kind { Number, String, Map, Other } kind = Kind::Other;
    bool integral = false;  // an int that fits in int64
    int64_t integer = 0;
    double number = 0;
    std::string text;
    std::shared_ptr<const Attributes> map;
};

class Attributes {
  public:
    Attributes& set(const std::string& key, Value value);
    Attributes& set_int(const std::string& key, int64_t value);
    Attributes& set_float(const std::string& key, double value);
    Attributes& set_string(const std::string& key, const std::string& value);
    Attributes& set_map(const std::string& key, Attributes value);
    Attributes& set_grid(const std::string& key, Grid grid);

    bool has(const char* key) const { return lookup(key) != nullptr; }
    // "plan op is missing 'key'" when absent; "plan op field 'key' must be ..." when of the wrong kind.
    int get_int(const char* key) const;
    float get_float(const char* key) const;
    std::string get_string(const char* key) const;
    // The grid at `key`, checked to lie inside uint8.
    Grid get_grid(const char* key) const;
    // Every top-level string value: the names an op may use to point at arrays.
    std::vector<std::string> strings() const;

  private:
    const Value* lookup(const char* key) const;
    const Value& find(const char* key, const char* what) const;
    // Sorted by key: one allocation and a binary search (a plan has thousands of fields to convert).
    std::vector<std::pair<std::string, Value>> values_;
};

// The named array `attrs[key]` points at in `arrays`, checked for its element type, C order and count.
const void* checked_array(const Attributes& attrs, const ArrayTable& arrays, const char* key, Dtype dtype, size_t count);

template <class T>
const T* get_array(const Attributes& attrs, const ArrayTable& arrays, const char* key, size_t count) {
    return static_cast<const T*>(checked_array(attrs, arrays, key, dtype_of<T>(), count));
}

// A list field as the engine receives it: "key.count" entries "key.0", "key.1", ... (packing flattens lists).
int list_length(const Attributes& attrs, const std::string& key, const char* what);
std::string list_item(const std::string& key, int index);

// Throws "what: dimension out of range" unless every value is in [1, 2^24].
void check_positive(std::initializer_list<int> values, const char* what);

// The window fields of a conv, depthwise conv or max pool: positive kernel and stride, each padding
// smaller than the kernel, at most kMaxTaps taps.
struct Window {
    int kernel_h, kernel_w, stride_h, stride_w, pad_top, pad_left;
};
Window read_window(const Attributes& attrs, const char* what);

// An input or output op's "index" (which of the plan's inputs it reads or outputs it writes; 0 when absent),
// checked to be in [0, 2^16): the engine checks that their indices are exactly 0 .. count - 1.
int boundary_index(const Attributes& attrs);

// Copies a window into any struct with the same six fields (ConvOp, DepthwiseOp).
template <class Target>
void assign_window(Target& t, const Window& w) {
    t.kernel_h = w.kernel_h, t.kernel_w = w.kernel_w, t.stride_h = w.stride_h, t.stride_w = w.stride_w;
    t.pad_top = w.pad_top, t.pad_left = w.pad_left;
}

}  // namespace edge
