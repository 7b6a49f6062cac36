// Block fusion: the inverted-residual block of MobileNetV2, EfficientNet and MNASNet (a 1x1 expansion conv,
// a depthwise conv, a 1x1 projection conv with the residual add folded in) run strip by strip of output rows,
// so the expanded tensors (several times the block's channels, megabytes at 224x224) never leave the core's
// cache. Each stage is the built op's own kernel on a view of its rows, so every code is the unfused plan's,
// bit for bit: fusion changes where values are kept, never an integer. The unfused ops stay built and
// `Engine::trace` and `Engine::profile` run them (they report every tensor and every op).
#pragma once

#include <memory>
#include <vector>

#include "op_registry.h"

namespace edge {

// The ops a plan runs once its blocks are fused: pointers into the built plan's ops, or to fused ops it owns.
struct FusedPlan {
    std::vector<const Operator*> ops;
    std::vector<std::unique_ptr<Operator>> owned;
    int blocks = 0;  // how many blocks were fused
};

// Replaces each chain [expand conv,] depthwise conv, projection conv of `ops` by one fused op: adjacent ops
// whose stages are fusable (Operator::fusable_conv / fusable_depthwise), each intermediate tensor read only by
// the next stage, the depthwise output at least `min_rows` rows high (below that a block's tensors fit the
// cache anyway and its rows are too few to share between threads). Asks `build` for the strip buffers.
FusedPlan fuse_blocks(const std::vector<std::unique_ptr<Operator>>& ops, BuildContext& build, int min_rows);

}  // namespace edge
