// Checked reads of a plan op's fields and of the arrays it names (see attributes.h).
#include "attributes.h"

#include <algorithm>
#include <climits>
#include <cstring>

#include "conv_driver.h"

namespace edge {

namespace {

std::string quoted(const char* key) { return std::string("'") + key + "'"; }

bool key_less(const std::pair<std::string, Value>& entry, const char* key) { return std::strcmp(entry.first.c_str(), key) < 0; }

}  // namespace

Attributes& Attributes::set(const std::string& key, Value value) {
    auto at = std::lower_bound(values_.begin(), values_.end(), key.c_str(), key_less);
    if (at != values_.end() && at->first == key) at->second = std::move(value);
    else values_.emplace(at, key, std::move(value));
    return *this;
}

const Value* Attributes::lookup(const char* key) const {
    auto at = std::lower_bound(values_.begin(), values_.end(), key, key_less);
    return at != values_.end() && at->first == key ? &at->second : nullptr;
}

Attributes& Attributes::set_int(const std::string& key, int64_t value) {
    Value v;
    v.kind = Value::Kind::Number, v.integral = true, v.integer = value, v.number = static_cast<double>(value);
    return set(key, std::move(v));
}

Attributes& Attributes::set_float(const std::string& key, double value) {
    Value v;
    v.kind = Value::Kind::Number, v.number = value;
    return set(key, std::move(v));
}

Attributes& Attributes::set_string(const std::string& key, const std::string& value) {
    Value v;
    v.kind = Value::Kind::String, v.text = value;
    return set(key, std::move(v));
}

Attributes& Attributes::set_map(const std::string& key, Attributes value) {
    Value v;
    v.kind = Value::Kind::Map, v.map = std::make_shared<const Attributes>(std::move(value));
    return set(key, std::move(v));
}

Attributes& Attributes::set_grid(const std::string& key, Grid grid) {
    Attributes g;
    g.set_float("scale", grid.scale).set_int("zero", grid.zero).set_int("low", grid.low).set_int("high", grid.high);
    return set_map(key, std::move(g));
}

const Value& Attributes::find(const char* key, const char* what) const {
    const Value* found = lookup(key);
    if (!found) throw std::invalid_argument(std::string("plan op is missing ") + what + quoted(key));
    return *found;
}

int Attributes::get_int(const char* key) const {
    const Value& v = find(key, "");
    if (v.kind != Value::Kind::Number || !v.integral || v.integer < INT_MIN || v.integer > INT_MAX)
        throw std::invalid_argument("plan op field " + quoted(key) + " must be an integer that fits in int32");
    return static_cast<int>(v.integer);
}

float Attributes::get_float(const char* key) const {
    const Value& v = find(key, "");
    if (v.kind != Value::Kind::Number) throw std::invalid_argument("plan op field " + quoted(key) + " must be a number");
    return static_cast<float>(v.number);
}

std::string Attributes::get_string(const char* key) const {
    const Value& v = find(key, "");
    if (v.kind != Value::Kind::String) throw std::invalid_argument("plan op field " + quoted(key) + " must be a string");
    return v.text;
}

Grid Attributes::get_grid(const char* key) const {
    const Value& v = find(key, "grid ");
    if (v.kind != Value::Kind::Map)
        throw std::invalid_argument("plan op field " + quoted(key) + " must be a grid {scale, zero, low, high}");
    const Attributes& g = *v.map;
    const Grid grid{g.get_float("scale"), g.get_int("zero"), g.get_int("low"), g.get_int("high")};
    if (grid.low < 0 || grid.high > 255 || grid.low > grid.high || grid.zero < 0 || grid.zero > 255)
        throw std::invalid_argument("grid " + quoted(key) + " is outside uint8");
    return grid;
}

std::vector<std::string> Attributes::strings() const {
    std::vector<std::string> texts;
    for (const auto& entry : values_)
        if (entry.second.kind == Value::Kind::String) texts.push_back(entry.second.text);
    return texts;
}

const void* checked_array(const Attributes& attrs, const ArrayTable& arrays, const char* key, Dtype dtype, size_t count) {
    if (!attrs.has(key)) throw std::invalid_argument(std::string("plan op is missing array ") + quoted(key));
    const std::string name = attrs.get_string(key);
    auto found = arrays.find(name);
    if (found == arrays.end()) throw std::invalid_argument("plan names a missing tensor '" + name + "'");
    const ArrayRef& a = found->second;
    if (a.dtype != dtype || !a.contiguous) throw std::invalid_argument("tensor '" + name + "' has the wrong dtype or layout");
    if (a.count != count)
        throw std::invalid_argument("tensor '" + name + "' has " + std::to_string(a.count) + " elements, the plan needs " +
                                    std::to_string(count));
    return a.data;
}

void check_positive(std::initializer_list<int> values, const char* what) {
    for (int v : values)
        if (v <= 0 || v > (1 << 24)) throw std::invalid_argument(std::string(what) + ": dimension out of range");
}

Window read_window(const Attributes& attrs, const char* what) {
    const Window w{attrs.get_int("kernel_h"), attrs.get_int("kernel_w"), attrs.get_int("stride_h"),
                   attrs.get_int("stride_w"), attrs.get_int("pad_top"),  attrs.get_int("pad_left")};
    for (int v : {w.kernel_h, w.kernel_w, w.stride_h, w.stride_w})
        if (v <= 0 || v > (1 << 16)) throw std::invalid_argument(std::string(what) + ": kernel and stride must be positive");
    if (static_cast<long>(w.kernel_h) * w.kernel_w > kMaxTaps)
        throw std::invalid_argument(std::string(what) + ": at most " + std::to_string(kMaxTaps) + " kernel taps");
    if (w.pad_top < 0 || w.pad_left < 0 || w.pad_top >= w.kernel_h || w.pad_left >= w.kernel_w)
        throw std::invalid_argument(std::string(what) + ": padding out of range");
    return w;
}

int list_length(const Attributes& attrs, const std::string& key, const char* what) {
    const int count = attrs.get_int((key + ".count").c_str());
    if (count < 1 || count > (1 << 16)) throw std::invalid_argument(std::string(what) + ": list '" + key + "' length out of range");
    return count;
}

std::string list_item(const std::string& key, int index) { return key + "." + std::to_string(index); }

int boundary_index(const Attributes& attrs) {
    const int index = attrs.has("index") ? attrs.get_int("index") : 0;
    if (index < 0 || index >= (1 << 16)) throw std::invalid_argument("plan op field 'index' out of range");
    return index;
}

}  // namespace edge
