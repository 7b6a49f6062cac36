// bf16_conv: a 2-D convolution of an f32 (C, H, W) tensor in ONNX order (groups, stride, padding, dilation,
// optional bias) computed in bfloat16 as INT8_SPEC rule 20 fixes it: inputs and weights rounded to bfloat16,
// products added to a float32 accumulator pair by pair (vdpbf16ps's order), then the bias; float32 out. The
// input and output tensors may instead be stored as bfloat16 bits in the channel-pairs layout (bf16.h; the
// compiler does so where every reader is a bf16_conv's input, which rounds to bfloat16 anyway): the op tells
// which from the tensor's size.
//
// Per group it is a GEMM: rows are the group's output channels; the reduction runs over the taps, and within a
// tap over pairs of the group's input channels (an odd count ends with a zero channel). The op first converts
// its input once into that form: per group, [channel pairs][wide_h][wide_w] 32-bit words of two bfloat16, with
// a zero border of the padding, so every window read is in bounds; a strided conv's rows and columns are
// split there by their remainder modulo the stride (stride_h x stride_w phases of [phase_h][phase_w]), which
// makes it a stride-1 conv over the phases. The GEMM then reads its operand straight from there: numbering
// output pixels over the phase width, tap (a, b) of pixel q is word q + its tap's shift (the phase of
// (a * dilation, b * dilation), and the rows and columns that remain), so a tile of kBf16TilePixels
// consecutive pixels is one contiguous run per pair (the columns past out_w are computed and dropped). A 1x1
// stride-1 conv without padding reading a channel-pairs tensor has nothing to convert: the tensor is that form,
// and the GEMM reads it in place. Work is split into (sample, group, tile) units; weights are packed into pairs
// when the plan loads.
//
// A depthwise conv (one input channel per group) is no GEMM: per (sample, input channel) unit, a thread
// copies the channel's plane as bfloat16 values into its scratch with the zero border, each row split into
// stride_w phases so that every tap of 16 neighbouring outputs is one contiguous load (Bf16DepthwisePlane),
// then runs one fma per tap and output for each of the channel's output planes.
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
        // The converted planes' phases: a strided conv's padded rows and columns split by their remainder.
        phase_h_ = (wide_h_ + g_.stride_h - 1) / g_.stride_h, phase_w_ = (wide_w_ + g_.stride_w - 1) / g_.stride_w;
        // At stride_w 1, a row's right border can be the next row's left one (both zero) when it is no wider:
        // rows of pad_left + in_w words, so fewer columns are computed and dropped; the last row's right
        // border is `tail_` zero words after each phase.
        const int pad_right = wide_w_ - g_.pad_left - g_.in_w;
        if (g_.stride_w == 1 && pad_right >= 0 && pad_right <= g_.pad_left) phase_w_ = g_.pad_left + g_.in_w, tail_ = pad_right;
        phase_words_ = element_count({phase_h_, phase_w_}, "bf16_conv") + tail_;
        plane_words_ = phase_words_ * element_count({g_.stride_h, g_.stride_w}, "bf16_conv");
        // The phases some tap reads (a 1x1 strided conv reads only phase (0, 0)): the others are not converted.
        row_phase_read_.assign(g_.stride_h, false), column_phase_read_.assign(g_.stride_w, false);
        for (int a = 0; a < g_.kernel_h; ++a) row_phase_read_[static_cast<long>(a) * g_.dilation_h % g_.stride_h] = true;
        for (int b = 0; b < g_.kernel_w; ++b) column_phase_read_[static_cast<long>(b) * g_.dilation_w % g_.stride_w] = true;
        // A wide tile's last pixels read up to kBf16LongTilePixels + phase_w words past a sample's planes (dropped columns).
        slack_words_ = static_cast<size_t>(kBf16LongTilePixels) + phase_w_;
        sample_words_ = element_count({g_.groups, channel_pairs_, static_cast<int>(plane_words_)}, "bf16_conv") + slack_words_;
        const float* weights = context.array<float>(attrs, "weights",
                                                    element_count({g_.out_c, group_in_, g_.kernel_h, g_.kernel_w}, "bf16_conv"));
        if (group_in_ == 1)  // depthwise (any channel multiplier): the taps of each output channel as floats
            for (size_t i = 0; i < static_cast<size_t>(g_.out_c) * taps_; ++i)
                depthwise_weights_.push_back(bf16_value(bf16_bits(weights[i])));
        if (attrs.has("bias")) bias_ = context.array<float>(attrs, "bias", static_cast<size_t>(g_.out_c));
        input_bf16_ = float_or_bf16(attrs, "input", element_count({g_.in_c, g_.in_h, g_.in_w}, "bf16_conv"), context);
        const size_t outputs = element_count({g_.out_c, g_.out_h, g_.out_w}, "bf16_conv");
        output_bf16_ = float_or_bf16(attrs, "output", outputs, context);
        // Channel pairs never straddle a group: a GEMM group reads (writes) whole pairs.
        if (input_bf16_ && (g_.in_c % 2 || (group_in_ % 2 && group_in_ != 1)))
            throw std::invalid_argument("bf16_conv: a bfloat16 input needs an even channel count and even groups (or depthwise)");
        if (output_bf16_ && (g_.out_c % 2 || (group_out_ % 2 && group_in_ != 1)))
            throw std::invalid_argument("bf16_conv: a bfloat16 output needs an even channel count and even groups (or depthwise)");
        in_place_ = input_bf16_ && group_in_ != 1 && g_.kernel_h == 1 && g_.kernel_w == 1 && g_.stride_h == 1 &&
                    g_.stride_w == 1 && g_.pad_top == 0 && g_.pad_left == 0 && g_.out_h == g_.in_h && g_.out_w == g_.in_w;
        if (attrs.has("skip")) tensors_.inputs.push_back(context.tensor_index(attrs, "skip", f32_bytes(outputs)));
        low_ = attrs.has("low") ? attrs.get_float("low") : -std::numeric_limits<float>::infinity();
        high_ = attrs.has("high") ? attrs.get_float("high") : std::numeric_limits<float>::infinity();
        if (!(low_ <= high_)) throw std::invalid_argument("bf16_conv: the clamp's low bound is above its high bound");
        const bool native = std::strcmp(context.backend().name, "avx512") == 0 && bf16_tile_avx512() && bf16_pairs_avx512() &&
                            bf16_depthwise_avx512() && bf16_round_avx512() &&
                            bf16_widen_avx512() && bf16_split_avx512();
        split_kernel_ = native ? bf16_split_avx512() : bf16_split_exact;
        if (group_in_ == 1) {  // the depthwise planes only: no GEMM weights, offsets or workspace
            // Channel pairs read in place, two channels at a time, where the CPU can and the geometry fits.
            if (native && input_bf16_ && group_out_ == 1 && g_.dilation_h == 1 && g_.dilation_w == 1 && g_.stride_w <= 2)
                channel_pairs_kernel_ = bf16_depthwise_pairs_avx512();
            depthwise_kernel_ = native ? bf16_depthwise_avx512() : bf16_depthwise_exact;
            round_kernel_ = native ? bf16_round_avx512() : bf16_round_exact;
            widen_kernel_ = native ? bf16_widen_avx512() : bf16_widen_exact;
            plan_depthwise(context);
            return;
        }
        kernel_ = native ? bf16_tile_avx512() : bf16_tile_exact;
        pairs_kernel_ = native ? bf16_pairs_avx512() : bf16_pairs_exact;
        pack_weights(weights);
        wide_offsets_.resize(pairs_), packed_offsets_.resize(pairs_);
        for (int t = 0; t < taps_; ++t)
            for (int i = 0; i < channel_pairs_; ++i) {
                const size_t j = static_cast<size_t>(t) * channel_pairs_ + i;
                wide_offsets_[j] = static_cast<long>(i) * static_cast<long>(plane_words_) + tap_shift(t);
                packed_offsets_[j] = static_cast<long>(j) * kBf16TilePixels;
            }
        // A layer with fewer than 16 tiles per sample (7x7 maps; a Gemm is a 1x1 conv on a 1x1 map) splits its
        // rows into chunks, about 16 units of work a sample, so at batch 1 the threads finish close together
        // (5 chunks on 2 threads leave one idle a fifth of the time).
        const long units = static_cast<long>(bf16_tile_count(g_.out_h * phase_w_)) * g_.groups;
        if (units < 16) {
            const int wanted = static_cast<int>((16 + units - 1) / units);
            chunk_blocks_ = std::max(1, (row_blocks_ + wanted - 1) / wanted);
        } else {
            chunk_blocks_ = row_blocks_;
        }
        chunks_ = (row_blocks_ + chunk_blocks_ - 1) / chunk_blocks_;
        // Tiles that span the batch are packed once per chunk, which costs about 4 row blocks of GEMM: their
        // chunks are about 2048 pairs x 8 rows of work each, and only where a sample has few tiles.
        span_blocks_ = units < 16 ? std::clamp((2048 + pairs_ - 1) / pairs_, 1, row_blocks_) : row_blocks_;
        span_chunks_ = (row_blocks_ + span_blocks_ - 1) / span_blocks_;
        if (!in_place_) context.need_workspace(sample_words_ * sizeof(uint32_t));
        // A 1x1 stride-1 conv of a float32 input in one chunk converts each tile's pairs as it computes it, into
        // the thread's scratch (no pass over the whole input, no wait between the two).
        tile_convert_ = !input_bf16_ && g_.kernel_h == 1 && g_.kernel_w == 1 && g_.stride_h == 1 && g_.stride_w == 1 &&
                        g_.pad_top == 0 && g_.pad_left == 0 && chunks_ == 1;
        if (tile_convert_)
            for (int j = 0; j < pairs_; ++j) tile_offsets_.push_back(static_cast<long>(j) * kBf16LongTilePixels);
        // A packed tile's words, then a tile of outputs (the batch-spanning tiles write there first); while the
        // input is converted, a strided conv's row before and after its columns split.
        line_words_ = static_cast<size_t>(phase_w_ + 15) / 16 * 16;
        context.need_scratch(std::max(static_cast<size_t>(pairs_ + group_out_) * kBf16LongTilePixels,
                                      (static_cast<size_t>(g_.stride_w) + 2) * line_words_) * sizeof(uint32_t) + 64);
        // Wide pixel q is output (q / phase_w, q % phase_w) when that column is inside out_w: per tile, the kept
        // pixels' mask and the output index of its first kept pixel.
        const int pixels = g_.out_h * phase_w_;
        for (int tile = 0, tiles = bf16_tile_count(pixels); tile < tiles; ++tile) {
            const int first = tile * kBf16TilePixels;
            uint64_t keep = 0;
            for (int p = 0; p < bf16_tile_pixels(tile, tiles, pixels); ++p)
                keep |= uint64_t{(first + p) % phase_w_ < g_.out_w} << p;
            wide_keep_.push_back(keep);
            wide_written_.push_back(static_cast<size_t>(first / phase_w_) * g_.out_w + std::min(first % phase_w_, g_.out_w));
        }
    }

    void run(const ExecutionContext& context) const override {
        const uint8_t* in = context.tensor(tensors_.inputs[0]);
        uint8_t* out = context.tensor(tensors_.output);
        const float* skip = tensors_.inputs.size() > 1 ? reinterpret_cast<const float*>(context.tensor(tensors_.inputs[1])) : nullptr;
        if (channel_pairs_kernel_) {
            context.scheduler.parallel(context.batch * g_.in_c / 2, 1, [&](int begin, int end, int) {
                for (int unit = begin; unit < end; ++unit) depthwise_pair(in, skip, out, unit);
            });
            return;
        }
        if (depthwise_kernel_) {
            context.scheduler.parallel(context.batch * g_.in_c, 1, [&](int begin, int end, int thread) {
                float* padded = static_cast<float*>(context.scratch(thread));
                for (int unit = begin; unit < end; ++unit) {
                    const int n = unit / g_.in_c, channel = unit % g_.in_c;
                    fill_plane(in, n, channel, padded, padded + static_cast<size_t>(wide_h_) * row_floats_);
                    for (int o = channel * group_out_; o < (channel + 1) * group_out_; ++o) depthwise_plane(padded, skip, out, n, o);
                }
            });
            return;
        }
        // The GEMM's operand: the input itself (read in place), or its conversion in the workspace.
        const uint32_t* words = reinterpret_cast<const uint32_t*>(in);
        size_t sample_words = static_cast<size_t>(g_.in_c / 2) * plane_words_;
        const bool spanning = context.batch > 1 && g_.out_h * g_.out_w < kBf16TilePixels;
        const bool per_tile = tile_convert_ && !spanning;
        if (!in_place_ && !per_tile) {
            uint32_t* converted = static_cast<uint32_t*>(context.workspace());
            context.scheduler.parallel(context.batch * g_.groups * channel_pairs_, 1, [&](int begin, int end, int thread) {
                convert(in, converted, static_cast<uint32_t*>(context.scratch(thread)), begin, end);
            });
            for (int n = 0; n < context.batch; ++n)
                std::fill(converted + (n + 1) * sample_words_ - slack_words_, converted + (n + 1) * sample_words_, 0u);
            words = converted, sample_words = sample_words_;
        }
        if (spanning) {  // small maps: tiles span the batch
            run_spanning(context.batch, words, sample_words, skip, out, context);
            return;
        }
        const int pixels = g_.out_h * phase_w_;
        const int tiles = bf16_tile_count(pixels);
        context.scheduler.parallel(context.batch * g_.groups * tiles * chunks_, 1, [&](int begin, int end, int thread) {
            for (int task = begin; task < end; ++task) {
                const int chunk = task % chunks_, unit = task / chunks_;
                const int tile = unit % tiles, group = unit / tiles % g_.groups, n = unit / tiles / g_.groups;
                const int first = tile * kBf16TilePixels, count = bf16_tile_pixels(tile, tiles, pixels);
                const uint32_t* source = words + static_cast<size_t>(n) * sample_words +
                                         static_cast<size_t>(group) * channel_pairs_ * plane_words_;
                // The group's first output plane, as an element index into the output.
                const size_t target = (static_cast<size_t>(n) * g_.out_c + static_cast<size_t>(group) * group_out_) *
                                      g_.out_h * g_.out_w;
                Bf16Tile t = chunk_tile(group, chunk, chunk_blocks_);
                t.offsets = wide_offsets_.data();
                t.pixels = count;
                t.low = low_, t.high = high_;
                t.row_stride = g_.out_h * g_.out_w;
                const size_t rows_before = static_cast<size_t>(chunk) * chunk_blocks_ * kBf16Rows * t.row_stride;
                const float* skip_plane = skip ? skip + target + rows_before : nullptr;
                t.x = source + first;
                if (per_tile) {  // the tile's pairs from the float32 channel planes, [pair][kBf16LongTilePixels]
                    uint32_t* packed = static_cast<uint32_t*>(context.scratch(thread));
                    const size_t plane = static_cast<size_t>(g_.in_h) * g_.in_w;
                    const float* floats = reinterpret_cast<const float*>(in) +
                                          (static_cast<size_t>(n) * g_.in_c + static_cast<size_t>(group) * group_in_) * plane + first;
                    for (int j = 0; j < channel_pairs_; ++j)
                        pairs_kernel_(floats + 2 * j * plane, 2 * j + 1 < group_in_ ? floats + (2 * j + 1) * plane : nullptr,
                                      packed + static_cast<size_t>(j) * kBf16LongTilePixels, count);
                    t.x = packed, t.offsets = tile_offsets_.data();
                }
                t.keep = wide_keep_[tile];
                const size_t written = wide_written_[tile];  // the output index of the tile's first kept pixel
                t.out = output_bf16_ ? nullptr : reinterpret_cast<float*>(out) + target + rows_before + written;
                // In the channel-pairs layout, (channel c even, pixel q) is halfword (n, c) * plane + 2q.
                t.out_bf16 = output_bf16_ ? reinterpret_cast<uint16_t*>(out) + target + rows_before + 2 * written : nullptr;
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

    // Planes [begin, end) of (sample, group, channel pair): its padded rows r < stride_h * phase_h, two input
    // channels as bfloat16 pairs, zero in the border, past the last window and for the missing odd channel.
    // Row r is row r / stride_h of phase (r % stride_h, c % stride_w) for its column c; `line` is a thread's
    // scratch for a strided row before and after its columns split.
    void convert(const uint8_t* in, uint32_t* words, uint32_t* line, int begin, int end) const {
        const int rows = g_.stride_h * phase_h_, sw = g_.stride_w;
        const int inside = std::min(g_.in_w, wide_w_ - g_.pad_left);
        const size_t plane_size = static_cast<size_t>(g_.in_h) * g_.in_w;
        for (int unit = begin; unit < end; ++unit) {
            const int pair = unit % channel_pairs_, group = unit / channel_pairs_ % g_.groups;
            const int n = unit / channel_pairs_ / g_.groups, channel = group * group_in_ + 2 * pair;
            const bool has_odd = 2 * pair + 1 < group_in_;
            uint32_t* plane = words + static_cast<size_t>(n) * sample_words_ + (static_cast<size_t>(group) * channel_pairs_ + pair) * plane_words_;
            const size_t even = (static_cast<size_t>(n) * g_.in_c + channel) * plane_size;  // the even channel's plane
            if (tail_)
                for (int p = 0; p < g_.stride_h; ++p) std::fill_n(plane + (p + 1) * phase_words_ - tail_, tail_, 0u);
            for (int r = 0; r < rows; ++r) {
                const int y = r - g_.pad_top;
                if (!row_phase_read_[r % g_.stride_h]) continue;
                uint32_t* target = plane + static_cast<size_t>(r % g_.stride_h) * sw * phase_words_ + static_cast<size_t>(r / g_.stride_h) * phase_w_;
                if (y < 0 || y >= g_.in_h || r >= wide_h_) {
                    for (int p = 0; p < sw; ++p) std::fill(target + p * phase_words_, target + p * phase_words_ + phase_w_, 0u);
                    continue;
                }
                uint32_t* values = sw == 1 ? target : line;  // the padded row, wide_w words (sw * phase_w with zeros)
                for (int i = 0; i < g_.pad_left; ++i) values[i] = 0;
                const size_t at = even + static_cast<size_t>(y) * g_.in_w;
                if (input_bf16_) {  // the channel pair's words as they are
                    const uint32_t* pairs = reinterpret_cast<const uint32_t*>(in) + pair_word(n, channel, y);
                    std::copy(pairs, pairs + inside, values + g_.pad_left);
                } else {
                    const float* floats = reinterpret_cast<const float*>(in);
                    pairs_kernel_(floats + at, has_odd ? floats + at + plane_size : nullptr, values + g_.pad_left, inside);
                }
                const int filled = g_.pad_left + inside, width = sw == 1 ? phase_w_ : sw * static_cast<int>(line_words_);
                for (int i = filled; i < width; ++i) values[i] = 0;
                if (sw == 2) {  // a permute of 32-bit lanes moves the words' bits unchanged
                    uint32_t* split = line + 2 * line_words_;
                    split_kernel_(reinterpret_cast<const float*>(line), reinterpret_cast<float*>(split),
                                  reinterpret_cast<float*>(split + line_words_), static_cast<int>(line_words_));
                    for (int p = 0; p < 2; ++p)
                        if (column_phase_read_[p]) std::copy(split + p * line_words_, split + p * line_words_ + phase_w_, target + p * phase_words_);
                } else if (sw > 2) {
                    for (int p = 0; p < sw; ++p)
                        for (int i = 0; i < phase_w_; ++i) target[p * phase_words_ + i] = line[i * sw + p];
                }
            }
        }
    }

    // Maps smaller than a tile at batch > 1: tiles of kBf16TilePixels (sample, pixel) outputs over the whole
    // batch, packed, computed into the scratch tile and scattered to each sample's planes (plus skip, clamped).
    void run_spanning(int batch, const uint32_t* words, size_t sample_words, const float* skip, uint8_t* out,
                      const ExecutionContext& context) const {
        const int plane = g_.out_h * g_.out_w, total = batch * plane;
        const int tiles = (total + kBf16TilePixels - 1) / kBf16TilePixels;
        context.scheduler.parallel(g_.groups * tiles * span_chunks_, 1, [&](int begin, int end, int thread) {
            uint32_t* packed = static_cast<uint32_t*>(context.scratch(thread));
            float* results = reinterpret_cast<float*>(packed + static_cast<size_t>(pairs_) * kBf16TilePixels);
            for (int task = begin; task < end; ++task) {
                const int chunk = task % span_chunks_, unit = task / span_chunks_;
                const int group = unit / tiles, first = unit % tiles * kBf16TilePixels;
                const int count = std::min(kBf16TilePixels, total - first);
                long base[kBf16TilePixels];
                size_t place[kBf16TilePixels];  // each output's index in the (batch, out_c, out_h, out_w) output
                int pixel[kBf16TilePixels];
                for (int p = 0; p < count; ++p) {
                    const int n = (first + p) / plane, q = (first + p) % plane;
                    base[p] = static_cast<long>(n) * static_cast<long>(sample_words) + pixel_base(q);
                    place[p] = (static_cast<size_t>(n) * g_.out_c + static_cast<size_t>(group) * group_out_) * plane + q;
                    pixel[p] = q;
                }
                pack_tile(words + static_cast<size_t>(group) * channel_pairs_ * plane_words_, base, count, packed);
                Bf16Tile t = chunk_tile(group, chunk, span_blocks_);
                t.x = packed, t.offsets = packed_offsets_.data();
                t.out = results, t.out_bf16 = nullptr, t.row_stride = kBf16TilePixels, t.skip = nullptr, t.keep = ~uint64_t{0};
                t.pixels = count;
                const int row0 = chunk * span_blocks_ * kBf16Rows;
                t.low = skip ? -std::numeric_limits<float>::infinity() : low_;
                t.high = skip ? std::numeric_limits<float>::infinity() : high_;
                kernel_(t);
                for (int r = 0; r < t.rows; ++r)
                    for (int p = 0; p < count; ++p) {
                        const size_t at = place[p] + static_cast<size_t>(row0 + r) * plane;
                        float y = results[static_cast<size_t>(r) * kBf16TilePixels + p];
                        if (skip) y = clamped(y + skip[at]);
                        if (output_bf16_) {  // (n, c, q) is halfword (n, c & ~1) * plane + 2q + (c & 1) of the pairs
                            const size_t odd = (group * group_out_ + row0 + r) & 1;
                            reinterpret_cast<uint16_t*>(out)[at - odd * plane + pixel[p] + odd] = bf16_bits(y);
                        } else {
                            reinterpret_cast<float*>(out)[at] = y;
                        }
                    }
            }
        });
    }

    // A tile's weights, bias and rows for the output rows of `chunk` (of `blocks` row blocks each) in `group`
    // (the caller fills the rest).
    Bf16Tile chunk_tile(int group, int chunk, int blocks) const {
        const int row0 = chunk * blocks * kBf16Rows;
        Bf16Tile t;
        t.w = weights_.data() + (static_cast<size_t>(group) * row_blocks_ + static_cast<size_t>(chunk) * blocks) * pairs_ * kBf16Rows;
        t.bias = bias_ ? bias_ + static_cast<size_t>(group) * group_out_ + row0 : nullptr;
        t.rows = std::min(group_out_ - row0, blocks * kBf16Rows), t.pairs = pairs_;
        return t;
    }

    // The word of a channel-pairs input holding (n, channel, y, 0): word (n, channel / 2, y, 0).
    size_t pair_word(int n, int channel, int y) const {
        return (static_cast<size_t>(n) * g_.in_c + channel) / 2 * g_.in_h * g_.in_w + static_cast<size_t>(y) * g_.in_w;
    }

    // Output pixel q's window origin in a group's converted planes (words from the plane start).
    long pixel_base(int q) const { return static_cast<long>(q / g_.out_w) * phase_w_ + q % g_.out_w; }

    // Tap t's offset from a window origin in the converted planes.
    long tap_shift(int t) const {
        const long down = static_cast<long>(t / g_.kernel_w) * g_.dilation_h, across = static_cast<long>(t % g_.kernel_w) * g_.dilation_w;
        return (down % g_.stride_h * g_.stride_w + across % g_.stride_w) * static_cast<long>(phase_words_) +
               down / g_.stride_h * phase_w_ + across / g_.stride_w;
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

    // A depthwise conv's padded planes: rows of stride_w phases, each phase wide enough for the last vector's
    // reads past out_w (up to a multiple of 16 outputs) at the largest tap shift; the per-tap offsets; and the
    // scratch a thread needs for one plane plus one unsplit row.
    void plan_depthwise(BuildContext& context) {
        const int stride = g_.stride_w, reach = static_cast<int>((g_.extent_w - 1) / stride);
        phase_floats_ = ((g_.out_w + 15) / 16 * 16 + reach + 15) / 16 * 16;
        row_floats_ = static_cast<long>(stride) * phase_floats_;
        for (int t = 0; t < taps_; ++t) {
            const long shift = static_cast<long>(t % g_.kernel_w) * g_.dilation_w;
            depthwise_offsets_.push_back(static_cast<long>(t / g_.kernel_w) * g_.dilation_h * row_floats_ +
                                         shift % stride * phase_floats_ + shift / stride);
        }
        context.need_scratch(f32_bytes(element_count({wide_h_ + 1, static_cast<int>(row_floats_)}, "bf16_conv")));
    }

    // Input channel `channel` of sample n as its padded plane (Bf16DepthwisePlane): rows outside the input and
    // columns outside it zero, the rest the input's bfloat16 values; `line` holds a row before its phases split.
    void fill_plane(const uint8_t* in, int n, int channel, float* padded, float* line) const {
        const size_t plane = (static_cast<size_t>(n) * g_.in_c + channel) * g_.in_h * g_.in_w;
        const int inside = std::min(g_.in_w, wide_w_ - g_.pad_left);
        for (int row = 0; row < wide_h_; ++row) {
            float* target = padded + row * row_floats_;
            const int y = row - g_.pad_top;
            if (y < 0 || y >= g_.in_h) {
                std::fill(target, target + row_floats_, 0.0f);
                continue;
            }
            float* values = g_.stride_w == 1 ? target : line;
            std::fill(values, values + g_.pad_left, 0.0f);
            const size_t first = plane + static_cast<size_t>(y) * g_.in_w;
            if (input_bf16_) {  // the channel's half of its pair's words
                widen_kernel_(reinterpret_cast<const uint32_t*>(in) + pair_word(n, channel, y), channel & 1, values + g_.pad_left, inside);
            } else {
                round_kernel_(reinterpret_cast<const float*>(in) + first, values + g_.pad_left, inside);
            }
            std::fill(values + g_.pad_left + inside, values + row_floats_, 0.0f);
            if (g_.stride_w == 2) {
                split_kernel_(line, target, target + phase_floats_, static_cast<int>(phase_floats_));
            } else if (g_.stride_w > 2) {
                for (int p = 0; p < g_.stride_w; ++p)
                    for (long i = 0; i < phase_floats_; ++i) target[p * phase_floats_ + i] = line[i * g_.stride_w + p];
            }
        }
    }

    // Output channel `o` of sample `n` of a depthwise conv from its input channel's padded plane.
    void depthwise_plane(const float* padded, const float* skip, uint8_t* out, int n, int o) const {
        const size_t plane = (static_cast<size_t>(n) * g_.out_c + o) * g_.out_h * g_.out_w;
        Bf16DepthwisePlane d;
        d.padded = padded, d.offsets = depthwise_offsets_.data(), d.row_floats = row_floats_;
        d.weights = depthwise_weights_.data() + static_cast<size_t>(o) * taps_;
        d.bias = bias_ ? bias_[o] : 0.0f;
        d.skip = skip ? skip + plane : nullptr;
        d.out = output_bf16_ ? nullptr : reinterpret_cast<float*>(out) + plane;
        // Channel o's first halfword in the channel-pairs layout: (n, o & ~1) * out_h * out_w + (o & 1).
        const size_t odd = o & 1;
        d.out_bf16 = output_bf16_ ? reinterpret_cast<uint16_t*>(out) + plane - odd * g_.out_h * g_.out_w + odd : nullptr;
        d.out_h = g_.out_h, d.out_w = g_.out_w, d.stride_h = g_.stride_h, d.taps = taps_;
        d.low = low_, d.high = high_;
        depthwise_kernel_(d);
    }

    // Channel pair `unit` (sample n = unit / (in_c / 2)) of a depthwise conv read in place from its channel pairs.
    void depthwise_pair(const uint8_t* in, const float* skip, uint8_t* out, int unit) const {
        const size_t in_plane = static_cast<size_t>(g_.in_h) * g_.in_w, out_plane = static_cast<size_t>(g_.out_h) * g_.out_w;
        const int channel = unit % (g_.in_c / 2) * 2, n = unit / (g_.in_c / 2);
        const size_t even = (static_cast<size_t>(n) * g_.out_c + channel) * out_plane;  // channel's f32 plane
        Bf16DepthwisePairs d;
        d.in = reinterpret_cast<const uint32_t*>(in) + static_cast<size_t>(unit) * in_plane;
        for (int k = 0; k < 2; ++k) {
            d.weights[k] = depthwise_weights_.data() + static_cast<size_t>(channel + k) * taps_;
            d.bias[k] = bias_ ? bias_[channel + k] : 0.0f;
            d.skip[k] = skip ? skip + even + k * out_plane : nullptr;
            d.out[k] = output_bf16_ ? nullptr : reinterpret_cast<float*>(out) + even + k * out_plane;
        }
        d.pairs = output_bf16_ ? reinterpret_cast<uint32_t*>(out) + static_cast<size_t>(unit) * out_plane : nullptr;
        d.in_h = g_.in_h, d.in_w = g_.in_w, d.out_h = g_.out_h, d.out_w = g_.out_w;
        d.kernel_h = g_.kernel_h, d.kernel_w = g_.kernel_w, d.stride_h = g_.stride_h, d.stride_w = g_.stride_w;
        d.pad_top = g_.pad_top, d.pad_left = g_.pad_left, d.low = low_, d.high = high_;
        channel_pairs_kernel_(d);
    }

    // Whether tensor attrs[key] (`elements` per sample) is stored as bfloat16 bits rather than float32, by its
    // size; the index goes to the op's inputs ("input") or output.
    bool float_or_bf16(const Attributes& attrs, const char* key, size_t elements, BuildContext& context) {
        size_t bytes = 0;
        const int index = context.tensor_index_sized(attrs, key, bytes);
        if (bytes != f32_bytes(elements) && bytes != elements * sizeof(uint16_t))
            throw std::invalid_argument(std::string("bf16_conv: tensor '") + key + "' holds " + std::to_string(bytes) +
                                        " bytes per sample, not " + std::to_string(elements) + " float32 or bfloat16 values");
        if (std::strcmp(key, "output") == 0) tensors_.output = index;
        else tensors_.inputs.push_back(index);
        return bytes != f32_bytes(elements);
    }

    // The fused Relu/Clip of one value (NaN passes through, as in the kernels).
    float clamped(float value) const {
        value = value < low_ ? low_ : value;
        return high_ < value ? high_ : value;
    }

    const FloatConvGeometry g_;
    int group_in_, group_out_, channel_pairs_, taps_, pairs_;
    int wide_h_, wide_w_, phase_h_, phase_w_, row_blocks_ = 0;
    int tail_ = 0;  // zero words after each converted phase: the last row's right border (rows sharing borders)
    std::vector<bool> row_phase_read_, column_phase_read_;  // the phases some tap reads (the others stay unconverted)
    int chunk_blocks_ = 1, chunks_ = 1;  // row blocks per work unit, and units per (sample, group, tile)
    int span_blocks_ = 1, span_chunks_ = 1;  // the same for tiles that span the batch
    size_t phase_words_, plane_words_, sample_words_, slack_words_, line_words_ = 0;
    float low_, high_;
    std::vector<uint32_t> weights_;
    std::vector<long> wide_offsets_, packed_offsets_;
    std::vector<uint64_t> wide_keep_;  // per tile of a stride-1 conv: its kept pixels
    std::vector<size_t> wide_written_;  // per tile of a stride-1 conv: the output index of its first kept pixel
    const float* bias_ = nullptr;
    bool input_bf16_ = false, output_bf16_ = false;  // tensors stored as bfloat16 bits (channel pairs)
    bool in_place_ = false;  // the input is the GEMM's operand as it is (a 1x1 stride-1 conv of channel pairs)
    bool tile_convert_ = false;  // a 1x1 stride-1 conv of float32 converting each tile as it computes it
    std::vector<long> tile_offsets_;  // pair j's words in a tile converted that way
    Bf16TileKernel kernel_ = nullptr;
    Bf16PairKernel pairs_kernel_ = nullptr;
    // A depthwise conv's kernels, taps (bfloat16 values as float32, per output channel), plane geometry.
    Bf16DepthwiseKernel depthwise_kernel_ = nullptr;
    Bf16DepthwisePairsKernel channel_pairs_kernel_ = nullptr;  // channel pairs in place (AVX-512), else the padded planes
    Bf16RoundKernel round_kernel_ = nullptr;
    Bf16WidenKernel widen_kernel_ = nullptr;
    Bf16SplitKernel split_kernel_ = nullptr;
    std::vector<float> depthwise_weights_;
    std::vector<long> depthwise_offsets_;
    long phase_floats_ = 0, row_floats_ = 0;
};

std::unique_ptr<Operator> make_bf16_conv(const Attributes& attrs, BuildContext& context) {
    return std::make_unique<Bf16Conv>(attrs, context);
}

}  // namespace

EDGE_REGISTER_OP("bf16_conv", make_bf16_conv);

}  // namespace edge
