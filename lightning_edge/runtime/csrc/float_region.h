// What the float-region ops (to_float, to_codes, float_*) share while they read their records: element
// counts that cannot overflow, list fields of dimensions and axes, and f32 tensor sizes (the engine's tensor
// sizes are bytes per sample; an f32 tensor holds 4 per element).
#pragma once

#include <cstddef>
#include <stdexcept>
#include <string>
#include <vector>

#include "attributes.h"

namespace edge {

// The most elements one sample of a float-region tensor may hold: int-indexable with room to spare.
constexpr size_t kMaxFloatElements = size_t{1} << 30;

// The product of positive dimensions, "what: too many elements" past kMaxFloatElements.
inline size_t element_count(const std::vector<int>& dims, const char* what) {
    size_t total = 1;
    for (int d : dims) {
        check_positive({d}, what);
        total *= static_cast<size_t>(d);
        if (total > kMaxFloatElements) throw std::invalid_argument(std::string(what) + ": too many elements");
    }
    return total;
}

// The length of the list field `key` (key.count, key.0, ...), checked to lie in [min_length, max_length].
inline int list_count(const Attributes& attrs, const std::string& key, int min_length, int max_length, const char* what) {
    const int count = attrs.get_int((key + ".count").c_str());
    if (count < min_length || count > max_length)
        throw std::invalid_argument(std::string(what) + ": list '" + key + "' must have " + std::to_string(min_length) +
                                    " to " + std::to_string(max_length) + " entries");
    return count;
}

// The list field `key` as integers, its length in [min_length, max_length].
inline std::vector<int> int_list(const Attributes& attrs, const std::string& key, int min_length, int max_length,
                                 const char* what) {
    const int count = list_count(attrs, key, min_length, max_length, what);
    std::vector<int> values;
    for (int i = 0; i < count; ++i) values.push_back(attrs.get_int(list_item(key, i).c_str()));
    return values;
}

// Bytes per sample of an f32 tensor of `elements` float32 values.
inline size_t f32_bytes(size_t elements) { return elements * sizeof(float); }

}  // namespace edge
