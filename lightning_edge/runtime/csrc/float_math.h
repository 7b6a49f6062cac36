// The float steps of the float-region ops, each written as numpy computes it (INT8_SPEC rules 10 and 17), so
// that the engine's float32 results are the reference's bit for bit: NaN-propagating maximum and minimum with
// numpy's choice between equal operands, and the float64 functions whose results are rounded to float32 once.
#pragma once

#include <cmath>

namespace edge {

// np.maximum / np.minimum: a NaN in either operand is the result; between equal operands (+0 and -0) the
// second one is returned, as numpy does.
template <class T>
inline T maximum(T a, T b) { return (a > b || std::isnan(a)) ? a : b; }
template <class T>
inline T minimum(T a, T b) { return (a < b || std::isnan(a)) ? a : b; }

// numpy's npy_logaddexp(x, y) = log(exp(x) + exp(y)) without overflow.
inline double logaddexp(double x, double y) {
    if (x == y) return x + 0.693147180559945309417232121458176568;  // equal infinities included
    const double tmp = x - y;
    if (tmp > 0) return x + std::log1p(std::exp(-tmp));
    if (tmp <= 0) return y + std::log1p(std::exp(tmp));
    return tmp;  // a NaN
}

// Softplus and Mish as reference.py spells them: np.logaddexp(0.0, x), x * tanh(softplus(x)), in float64.
inline double softplus(double x) { return logaddexp(0.0, x); }
inline double mish(double x) { return x * std::tanh(softplus(x)); }

inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// Opset-20 Gelu in float64: exact (erf) or its tanh approximation, with reference.gelu's order of operations.
inline double gelu_erf(double x) { return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0))); }
inline double gelu_tanh(double x) {
    const double c = std::sqrt(2.0 / 3.14159265358979323846);
    return 0.5 * x * (1.0 + std::tanh(c * (x + 0.044715 * std::pow(x, 3.0))));
}

// reference.hard_sigmoid_f32: max(0, min(1, alpha * x + beta)), a float32 product then a float32 sum.
inline float hard_sigmoid(float x, float alpha, float beta) {
    const float product = alpha * x;
    return maximum(0.0f, minimum(1.0f, product + beta));
}

}  // namespace edge
