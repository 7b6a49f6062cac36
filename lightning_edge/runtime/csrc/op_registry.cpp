// The registry of op kinds and the build-time checks ops share (see op_registry.h).
#include "op_registry.h"

#include <map>
#include <stdexcept>

namespace edge {

namespace {

// Made on first use, so registrations from any file's static initializers find it constructed.
std::map<std::string, OperatorFactory>& registry() {
    static std::map<std::string, OperatorFactory> factories;
    return factories;
}

}  // namespace

int BuildContext::tensor_index(const Attributes& attrs, const char* key, size_t expected) const {
    const int t = attrs.get_int(key);
    if (t < 0 || t >= static_cast<int>(tensor_sizes_.size()))
        throw std::invalid_argument(std::string("tensor index '") + key + "' out of range");
    if (tensor_sizes_[t] != expected)
        throw std::invalid_argument(std::string("tensor '") + key + "' has " + std::to_string(tensor_sizes_[t]) +
                                    " elements per sample, the op needs " + std::to_string(expected));
    return t;
}

int BuildContext::tensor_index_sized(const Attributes& attrs, const char* key, size_t& bytes) const {
    const int t = attrs.get_int(key);
    if (t < 0 || t >= static_cast<int>(tensor_sizes_.size()))
        throw std::invalid_argument(std::string("tensor index '") + key + "' out of range");
    bytes = tensor_sizes_[t];
    return t;
}

size_t BuildContext::array_count(const Attributes& attrs, const char* key) const {
    if (!attrs.has(key)) throw std::invalid_argument(std::string("plan op is missing array '") + key + "'");
    const std::string name = attrs.get_string(key);
    auto found = arrays_.find(name);
    if (found == arrays_.end()) throw std::invalid_argument("plan names a missing tensor '" + name + "'");
    return found->second.count;
}

OperatorFactory find_operator(const std::string& kind) {
    auto found = registry().find(kind);
    if (found == registry().end()) throw std::invalid_argument("unknown op kind '" + kind + "'");
    return found->second;
}

std::vector<std::string> registered_operators() {
    std::vector<std::string> kinds;
    for (const auto& entry : registry()) kinds.push_back(entry.first);
    return kinds;
}

OperatorRegistration::OperatorRegistration(const char* kind, OperatorFactory factory) {
    if (!registry().emplace(kind, factory).second)
        throw std::logic_error(std::string("op kind '") + kind + "' is registered twice: keep one EDGE_REGISTER_OP");
}

}  // namespace edge
