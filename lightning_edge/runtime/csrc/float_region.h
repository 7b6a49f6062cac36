// What the float-region ops (to_float, to_codes, float_*) share while they read their records: element
// counts that cannot overflow, list fields of dimensions and axes, and f32 tensor sizes (the engine's tensor
// sizes are bytes per sample; an f32 tensor holds 4 per element).
#pragma once

#include <cstddef>
#include <cstdint>
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

// The geometry a float-region conv (float_conv, bf16_conv) reads from its record, checked: positive sizes,
// channels that divide into the groups, a dilated kernel under 2^24 and padding smaller than it.
struct FloatConvGeometry {
    int in_c, in_h, in_w, out_c, out_h, out_w, groups, kernel_h, kernel_w, stride_h, stride_w;
    int dilation_h, dilation_w, pad_top, pad_left;
    int64_t extent_h, extent_w;  // the dilated kernel

    FloatConvGeometry(const Attributes& attrs, const std::string& what) {
        in_c = attrs.get_int("in_c"), in_h = attrs.get_int("in_h"), in_w = attrs.get_int("in_w");
        out_c = attrs.get_int("out_c"), out_h = attrs.get_int("out_h"), out_w = attrs.get_int("out_w");
        groups = attrs.get_int("groups");
        kernel_h = attrs.get_int("kernel_h"), kernel_w = attrs.get_int("kernel_w");
        stride_h = attrs.get_int("stride_h"), stride_w = attrs.get_int("stride_w");
        dilation_h = attrs.get_int("dilation_h"), dilation_w = attrs.get_int("dilation_w");
        pad_top = attrs.get_int("pad_top"), pad_left = attrs.get_int("pad_left");
        check_positive({in_c, in_h, in_w, out_c, out_h, out_w, groups, kernel_h, kernel_w, stride_h, stride_w,
                        dilation_h, dilation_w}, what.c_str());
        if (in_c % groups || out_c % groups) throw std::invalid_argument(what + ": channels do not divide into groups");
        extent_h = static_cast<int64_t>(kernel_h - 1) * dilation_h + 1;
        extent_w = static_cast<int64_t>(kernel_w - 1) * dilation_w + 1;
        if (extent_h > (1 << 24) || extent_w > (1 << 24)) throw std::invalid_argument(what + ": the dilated kernel is too large");
        if (pad_top < 0 || pad_left < 0 || pad_top >= extent_h || pad_left >= extent_w)
            throw std::invalid_argument(what + ": padding must be smaller than the dilated kernel");
    }
};

// Bytes per sample of an f32 tensor of `elements` float32 values.
inline size_t f32_bytes(size_t elements) { return elements * sizeof(float); }

}  // namespace edge
