// bf16_conv: a 2-D convolution of an f32 (C, H, W) tensor in ONNX order (groups, stride, padding, dilation,
// optional bias) computed in bfloat16 as INT8_SPEC rule 20 fixes it: inputs and weights rounded to bfloat16,
// products added to a float32 accumulator pair by pair (vdpbf16ps's order), then the bias; float32 out.
//
// Per group it is a GEMM: rows are the group's output channels; the reduction runs over the taps, and within a
// tap over pairs of the group's input channels (an odd count ends with a zero channel). The op first converts
// its input once into that form: per group, [channel pairs][wide_h][wide_w] 32-bit words of two bfloat16, with
// a zero border of the padding, so every window read is in bounds. A stride-1 conv then reads its GEMM
// operand straight from there: numbering output pixels over the wide width, tap (a, b) of pixel q is word
// q + (a * dilation) * wide_w + b * dilation, so a tile of kBf16TilePixels consecutive wide pixels is one
// contiguous run per pair (the columns past out_w are computed and dropped). A strided conv copies its
// tile's words into a packed [pairs][kBf16TilePixels] block first. Work is split into (sample, group, tile)
// units; weights are packed into pairs when the plan loads.
#include <cstring>
#include <limits>
#include <vector>

#include "bf16.h"
#include "float_region.h"
#include "op_registry.h"

namespace edge {

namespace {

class Bf16Conv final : public Operator {
  public:
    Bf16Conv(const Attributes& attrs, BuildContext& context) : g_(attrs, "bf16_conv") {
        group_in_ = g_.in_c / g_.groups, group_out_ = g_.out_c / g_.groups, channel_pairs_ = (group_in_ + 1) / 2;
        taps_ = g_.kernel_h * g_.kernel_w;
        element_count({taps_, channel_pairs_, 2}, "bf16_conv");
        pairs_ = taps_ * channel_pairs_;
        wide_h_ = static_cast<int>((static_cast<int64_t>(g_.out_h) - 1) * g_.stride_h + g_.extent_h);
        wide_w_ = static_cast<int>((static_cast<int64_t>(g_.out_w) - 1) * g_.stride_w + g_.extent_w);
        plane_words_ = element_count({wide_h_, wide_w_}, "bf16_conv");
        // A wide tile's last pixels read up to kBf16TilePixels + wide_w words past a sample's planes (dropped columns).
        slack_words_ = static_cast<size_t>(kBf16TilePixels) + wide_w_;
        sample_words_ = element_count({g_.groups, channel_pairs_, wide_h_, wide_w_}, "bf16_conv") + slack_words_;
        const float* weights = context.array<float>(attrs, "weights",
                                                    element_count({g_.out_c, group_in_, g_.kernel_h, g_.kernel_w}, "bf16_conv"));
        pack_weights(weights);
        if (group_in_ == 1)  // depthwise (any channel multiplier): the taps of each output channel as floats
            for (size_t i = 0; i < static_cast<size_t>(g_.out_c) * taps_; ++i)
                depthwise_weights_.push_back(bf16_value(bf16_bits(weights[i])));
        if (attrs.has("bias")) bias_ = context.array<float>(attrs, "bias", static_cast<size_t>(g_.out_c));
        tensors_.inputs = {context.tensor_index(attrs, "input", f32_bytes(element_count({g_.in_c, g_.in_h, g_.in_w}, "bf16_conv")))};
        const size_t output_bytes = f32_bytes(element_count({g_.out_c, g_.out_h, g_.out_w}, "bf16_conv"));
        tensors_.output = context.tensor_index(attrs, "output", output_bytes);
        if (attrs.has("skip")) tensors_.inputs.push_back(context.tensor_index(attrs, "skip", output_bytes));
        wide_ = g_.stride_h == 1 && g_.stride_w == 1;
        wide_offsets_.resize(pairs_), packed_offsets_.resize(pairs_);
        for (int t = 0; t < taps_; ++t)
            for (int i = 0; i < channel_pairs_; ++i) {
                const size_t j = static_cast<size_t>(t) * channel_pairs_ + i;
                wide_offsets_[j] = static_cast<long>(i) * static_cast<long>(plane_words_) + tap_shift(t);
                packed_offsets_[j] = static_cast<long>(j) * kBf16TilePixels;
            }
        low_ = attrs.has("low") ? attrs.get_float("low") : -std::numeric_limits<float>::infinity();
        high_ = attrs.has("high") ? attrs.get_float("high") : std::numeric_limits<float>::infinity();
        if (!(low_ <= high_)) throw std::invalid_argument("bf16_conv: the clamp's low bound is above its high bound");
        const bool native = std::strcmp(context.backend().name, "avx512") == 0 && bf16_tile_avx512() && bf16_pairs_avx512();
        kernel_ = native ? bf16_tile_avx512() : bf16_tile_exact;
        pairs_kernel_ = native ? bf16_pairs_avx512() : bf16_pairs_exact;
        if (group_in_ == 1 && native && bf16_round_avx512()) depthwise_kernel_ = bf16_depthwise_avx512();
        if (depthwise_kernel_) {
            // The depthwise kernel reads the input rounded to bfloat16 values in place of the converted pairs.
            context.need_workspace(f32_bytes(element_count({g_.in_c, g_.in_h, g_.in_w}, "bf16_conv")));
            return;
        }
        context.need_workspace(sample_words_ * sizeof(uint32_t));
        // A packed tile's words, then a tile of outputs (the batch-spanning tiles write there first).
        context.need_scratch(static_cast<size_t>(pairs_ + group_out_) * kBf16TilePixels * sizeof(uint32_t) + 64);
        if (wide_) {
            // Wide pixel q is output (q / wide_w, q % wide_w) when that column is inside out_w: per tile, the
            // kept pixels' mask and the output index of its first kept pixel.
            const int pixels = g_.out_h * wide_w_;
            for (int first = 0; first < pixels; first += kBf16TilePixels) {
                uint64_t keep = 0;
                for (int p = 0; p < std::min(kBf16TilePixels, pixels - first); ++p)
                    keep |= uint64_t{(first + p) % wide_w_ < g_.out_w} << p;
                wide_keep_.push_back(keep);
                wide_written_.push_back(static_cast<size_t>(first / wide_w_) * g_.out_w + std::min(first % wide_w_, g_.out_w));
            }
        }
    }

    void run(const ExecutionContext& context) const override {
        const float* in = reinterpret_cast<const float*>(context.tensor(tensors_.inputs[0]));
        float* out = reinterpret_cast<float*>(context.tensor(tensors_.output));
        const float* skip = tensors_.inputs.size() > 1 ? reinterpret_cast<const float*>(context.tensor(tensors_.inputs[1])) : nullptr;
        if (depthwise_kernel_) {
            float* rounded = static_cast<float*>(context.workspace());
            const size_t sample = static_cast<size_t>(g_.in_c) * g_.in_h * g_.in_w;
            const Bf16RoundKernel round = bf16_round_avx512();
            context.scheduler.parallel(context.batch * g_.in_c, 8, [&](int begin, int end, int) {
                round(in + begin * sample / g_.in_c, rounded + begin * sample / g_.in_c, (end - begin) * sample / g_.in_c);
            });
            context.scheduler.parallel(context.batch * g_.out_c, 1, [&](int begin, int end, int) {
                const Bf16FlushScope flush;
                for (int unit = begin; unit < end; ++unit) depthwise_plane(rounded, skip, out, unit / g_.out_c, unit % g_.out_c);
            });
            return;
        }
        uint32_t* words = static_cast<uint32_t*>(context.workspace());
        const int rows = context.batch * g_.groups * channel_pairs_ * wide_h_;
        context.scheduler.parallel(rows, 16, [&](int begin, int end, int) { convert(in, words, begin, end); });
        for (int n = 0; n < context.batch; ++n)
            std::fill(words + (n + 1) * sample_words_ - slack_words_, words + (n + 1) * sample_words_, 0u);
        if (context.batch > 1 && g_.out_h * g_.out_w < kBf16TilePixels) {  // small maps: tiles span the batch
            run_spanning(context.batch, words, skip, out, context);
            return;
        }
        const int pixels = wide_ ? g_.out_h * wide_w_ : g_.out_h * g_.out_w;
        const int tiles = (pixels + kBf16TilePixels - 1) / kBf16TilePixels;
        context.scheduler.parallel(context.batch * g_.groups * tiles, 1, [&](int begin, int end, int thread) {
            uint32_t* scratch = static_cast<uint32_t*>(context.scratch(thread));
            for (int unit = begin; unit < end; ++unit) {
                const int tile = unit % tiles, group = unit / tiles % g_.groups, n = unit / tiles / g_.groups;
                const int first = tile * kBf16TilePixels, count = std::min(kBf16TilePixels, pixels - first);
                const uint32_t* source = words + static_cast<size_t>(n) * sample_words_ +
                                         static_cast<size_t>(group) * channel_pairs_ * plane_words_;
                float* target = out + (static_cast<size_t>(n) * g_.out_c + static_cast<size_t>(group) * group_out_) *
                                          g_.out_h * g_.out_w;
                Bf16Tile t;
                t.offsets = wide_ ? wide_offsets_.data() : packed_offsets_.data();
                t.w = weights_.data() + static_cast<size_t>(group) * row_blocks_ * pairs_ * kBf16Rows;
                t.bias = bias_ ? bias_ + static_cast<size_t>(group) * group_out_ : nullptr;
                t.rows = group_out_, t.pairs = pairs_, t.pixels = count;
                t.low = low_, t.high = high_;
                t.row_stride = g_.out_h * g_.out_w;
                const float* skip_plane = skip ? skip + (target - out) : nullptr;
                size_t written = first;  // the output index of the tile's first kept pixel
                if (wide_) {
                    t.x = source + first;
                    t.keep = wide_keep_[tile];
                    written = wide_written_[tile];
                } else {
                    long base[kBf16TilePixels];
                    for (int p = 0; p < count; ++p) base[p] = pixel_base(first + p);
                    pack_tile(source, base, count, scratch);
                    t.x = scratch;
                    t.keep = ~uint64_t{0};
                }
                t.out = target + written;
                t.skip = skip_plane ? skip_plane + written : nullptr;
                kernel_(t);
            }
        });
    }

  private:
    // weights (out_c, group_in, kh, kw) -> per group [row block][tap, channel pair][kBf16Rows] words (Bf16Tile's
    // layout), an odd group's last pair (w, 0).
    void pack_weights(const float* weights) {
        row_blocks_ = (group_out_ + kBf16Rows - 1) / kBf16Rows;
        weights_.assign(static_cast<size_t>(g_.groups) * row_blocks_ * pairs_ * kBf16Rows, 0);
        for (int o = 0; o < g_.out_c; ++o) {
            const float* w = weights + static_cast<size_t>(o) * group_in_ * taps_;
            for (int t = 0; t < taps_; ++t)
                for (int i = 0; i < channel_pairs_; ++i) {
                    const int c = 2 * i;
                    const float even = w[static_cast<size_t>(c) * taps_ + t];
                    const float odd = c + 1 < group_in_ ? w[static_cast<size_t>(c + 1) * taps_ + t] : 0.0f;
                    const size_t j = static_cast<size_t>(t) * channel_pairs_ + i, row = o % group_out_;
                    const size_t block = static_cast<size_t>(o / group_out_) * row_blocks_ + row / kBf16Rows;
                    weights_[(block * pairs_ + j) * kBf16Rows + row % kBf16Rows] = bf16_pair(even, odd);
                }
        }
    }

    // Wide rows [begin, end) of (sample, group, channel pair, wide row): two input channels as bfloat16 pairs,
    // zero in the border and for the missing odd channel.
    void convert(const float* in, uint32_t* words, int begin, int end) const {
        for (int row = begin; row < end; ++row) {
            const int y = row % wide_h_ - g_.pad_top, pair = row / wide_h_ % channel_pairs_;
            const int group = row / wide_h_ / channel_pairs_ % g_.groups, n = row / wide_h_ / channel_pairs_ / g_.groups;
            uint32_t* target = words + static_cast<size_t>(n) * sample_words_ +
                               (static_cast<size_t>(group) * channel_pairs_ + pair) * plane_words_ +
                               static_cast<size_t>(row % wide_h_) * wide_w_;
            const int channel = group * group_in_ + 2 * pair;
            const bool has_odd = 2 * pair + 1 < group_in_;
            if (y < 0 || y >= g_.in_h) {
                std::fill(target, target + wide_w_, 0u);
                continue;
            }
            const float* even = in + ((static_cast<size_t>(n) * g_.in_c + channel) * g_.in_h + y) * g_.in_w;
            const float* odd = even + static_cast<size_t>(g_.in_h) * g_.in_w;
            const int inside = std::min(g_.in_w, wide_w_ - g_.pad_left);
            std::fill(target, target + g_.pad_left, 0u);
            pairs_kernel_(even, has_odd ? odd : nullptr, target + g_.pad_left, inside);
            std::fill(target + g_.pad_left + inside, target + wide_w_, 0u);
        }
    }

    // Maps smaller than a tile at batch > 1: tiles of kBf16TilePixels (sample, pixel) outputs over the whole
    // batch, packed, computed into the scratch tile and scattered to each sample's planes (plus skip, clamped).
    void run_spanning(int batch, const uint32_t* words, const float* skip, float* out, const ExecutionContext& context) const {
        const int plane = g_.out_h * g_.out_w, total = batch * plane;
        const int tiles = (total + kBf16TilePixels - 1) / kBf16TilePixels;
        context.scheduler.parallel(g_.groups * tiles, 1, [&](int begin, int end, int thread) {
            uint32_t* packed = static_cast<uint32_t*>(context.scratch(thread));
            float* results = reinterpret_cast<float*>(packed + static_cast<size_t>(pairs_) * kBf16TilePixels);
            for (int unit = begin; unit < end; ++unit) {
                const int group = unit / tiles, first = unit % tiles * kBf16TilePixels;
                const int count = std::min(kBf16TilePixels, total - first);
                long base[kBf16TilePixels];
                size_t place[kBf16TilePixels];  // each output's index in the (batch, out_c, out_h, out_w) output
                for (int p = 0; p < count; ++p) {
                    const int n = (first + p) / plane, q = (first + p) % plane;
                    base[p] = static_cast<long>(n) * static_cast<long>(sample_words_) + pixel_base(q);
                    place[p] = (static_cast<size_t>(n) * g_.out_c + static_cast<size_t>(group) * group_out_) * plane + q;
                }
                pack_tile(words + static_cast<size_t>(group) * channel_pairs_ * plane_words_, base, count, packed);
                Bf16Tile t;
                t.x = packed, t.offsets = packed_offsets_.data();
                t.w = weights_.data() + static_cast<size_t>(group) * row_blocks_ * pairs_ * kBf16Rows;
                t.bias = bias_ ? bias_ + static_cast<size_t>(group) * group_out_ : nullptr;
                t.out = results, t.row_stride = kBf16TilePixels, t.skip = nullptr, t.keep = ~uint64_t{0};
                t.rows = group_out_, t.pairs = pairs_, t.pixels = count;
                t.low = skip ? -std::numeric_limits<float>::infinity() : low_;
                t.high = skip ? std::numeric_limits<float>::infinity() : high_;
                kernel_(t);
                for (int r = 0; r < group_out_; ++r)
                    for (int p = 0; p < count; ++p) {
                        const size_t at = place[p] + static_cast<size_t>(r) * plane;
                        out[at] = results[static_cast<size_t>(r) * kBf16TilePixels + p];
                        if (skip) add_and_clamp(out + at, skip + at, 1);
                    }
            }
        });
    }

    // Output pixel q's window origin in a group's converted planes (words from the plane start).
    long pixel_base(int q) const {
        return static_cast<long>(q / g_.out_w) * g_.stride_h * wide_w_ + static_cast<long>(q % g_.out_w) * g_.stride_w;
    }

    // Tap t's offset from a window origin in the converted planes.
    long tap_shift(int t) const {
        return static_cast<long>(t / g_.kernel_w) * g_.dilation_h * wide_w_ + static_cast<long>(t % g_.kernel_w) * g_.dilation_w;
    }

    // A packed tile: the words of every (tap, channel pair) at the `count` window origins `base` (from
    // `source`, a group's first plane) into packed[pair][p], zero past `count`.
    void pack_tile(const uint32_t* source, const long* base, int count, uint32_t* packed) const {
        for (int t = 0; t < taps_; ++t) {
            const long shift = tap_shift(t);
            for (int i = 0; i < channel_pairs_; ++i) {
                const uint32_t* plane = source + static_cast<size_t>(i) * plane_words_ + shift;
                uint32_t* target = packed + static_cast<size_t>(t * channel_pairs_ + i) * kBf16TilePixels;
                for (int p = 0; p < count; ++p) target[p] = plane[base[p]];
                std::fill(target + count, target + kBf16TilePixels, 0u);
            }
        }
    }

    // Output channel `o` of sample `n` of a depthwise conv, by the depthwise kernel.
    void depthwise_plane(const float* rounded, const float* skip, float* out, int n, int o) const {
        const size_t plane = (static_cast<size_t>(n) * g_.out_c + o) * g_.out_h * g_.out_w;
        Bf16DepthwisePlane d;
        d.input = rounded + (static_cast<size_t>(n) * g_.in_c + o / group_out_) * g_.in_h * g_.in_w;
        d.weights = depthwise_weights_.data() + static_cast<size_t>(o) * taps_;
        d.bias = bias_ ? bias_[o] : 0.0f;
        d.skip = skip ? skip + plane : nullptr;
        d.out = out + plane;
        d.in_h = g_.in_h, d.in_w = g_.in_w, d.out_h = g_.out_h, d.out_w = g_.out_w, d.kernel_h = g_.kernel_h, d.kernel_w = g_.kernel_w;
        d.stride_h = g_.stride_h, d.stride_w = g_.stride_w, d.dilation_h = g_.dilation_h, d.dilation_w = g_.dilation_w;
        d.pad_top = g_.pad_top, d.pad_left = g_.pad_left;
        d.low = low_, d.high = high_;
        depthwise_kernel_(d);
    }

    // y = clamp(y + skip) over `count` outputs: the fused residual add, then the Relu/Clip.
    void add_and_clamp(float* y, const float* skip, int count) const {
        for (int i = 0; i < count; ++i) {
            float value = y[i] + skip[i];
            value = value < low_ ? low_ : value;
            y[i] = high_ < value ? high_ : value;
        }
    }

    const FloatConvGeometry g_;
    int group_in_, group_out_, channel_pairs_, taps_, pairs_;
    int wide_h_, wide_w_, row_blocks_ = 0;
    size_t plane_words_, sample_words_, slack_words_;
    bool wide_;
    float low_, high_;
    std::vector<uint32_t> weights_;
    std::vector<long> wide_offsets_, packed_offsets_;
    std::vector<uint64_t> wide_keep_;  // per tile of a stride-1 conv: its kept pixels
    std::vector<size_t> wide_written_;  // per tile of a stride-1 conv: the output index of its first kept pixel
    const float* bias_ = nullptr;
    Bf16TileKernel kernel_ = nullptr;
    Bf16PairKernel pairs_kernel_ = nullptr;
    Bf16DepthwiseKernel depthwise_kernel_ = nullptr;
    std::vector<float> depthwise_weights_;
};

std::unique_ptr<Operator> make_bf16_conv(const Attributes& attrs, BuildContext& context) {
    return std::make_unique<Bf16Conv>(attrs, context);
}

}  // namespace

EDGE_REGISTER_OP("bf16_conv", make_bf16_conv);

}  // namespace edge
