// Where every plan tensor lives: tensors share slots (a slot is reused once every reader of its tensor has
// run), planned once per plan; the buffers of each batch size (an arena) are made on first use and kept.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <utility>
#include <vector>

namespace edge {

// The tensors one op reads and writes (output -1: it writes none).
struct OpTensors {
    std::vector<int> inputs;
    int output = -1;
};

// The buffers of one batch size: one per slot, and the workspace the op running now may use (shared by
// its threads, sized for the largest any op asks for).
struct Arena {
    std::vector<std::vector<uint8_t>> slots;
    std::vector<int16_t> workspace;
};

class MemoryPlanner {
  public:
    // Checks the plan's data flow (no tensor written twice or read before it is written) and assigns the
    // slots. Sizes are per sample; workspace bytes per sample, scratch bytes per thread.
    MemoryPlanner(std::vector<size_t> tensor_sizes, const std::vector<OpTensors>& ops, size_t workspace_per_sample,
                  size_t scratch_per_thread, int threads);

    // The buffers of `batch` samples for batch group `group` (Engine::run gives each group its own; at most 8
    // arenas are kept, and making one never drops another of the same batch size: memory stays bounded).
    Arena& arena(int batch, int group = 0);

    uint8_t* tensor(Arena& arena, int index) const { return arena.slots[slot_of_[index]].data(); }
    size_t tensor_size(int index) const { return tensor_sizes_[index]; }
    int tensor_count() const { return static_cast<int>(tensor_sizes_.size()); }

    // Per-thread scratch that does not depend on the batch (Winograd transforms, pooling sums).
    void* scratch(int thread) { return scratch_.data() + static_cast<size_t>(thread) * scratch_stride_; }

  private:
    std::vector<size_t> tensor_sizes_;
    std::vector<int> slot_of_;
    std::vector<size_t> slot_sizes_;
    size_t workspace_per_sample_;
    size_t scratch_stride_;
    std::vector<uint8_t> scratch_;
    std::map<std::pair<int, int>, Arena> arenas_;  // by (batch, group)
};

}  // namespace edge
