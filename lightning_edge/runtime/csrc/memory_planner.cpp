// Slot assignment and arenas (see memory_planner.h).
#include "memory_planner.h"

#include <algorithm>
#include <cstdlib>
#include <iterator>
#include <stdexcept>

namespace edge {

MemoryPlanner::MemoryPlanner(std::vector<size_t> tensor_sizes, const std::vector<OpTensors>& ops,
                             size_t workspace_per_sample, size_t scratch_per_thread, int threads)
    : tensor_sizes_(std::move(tensor_sizes)), workspace_per_sample_(workspace_per_sample),
      scratch_stride_((scratch_per_thread + 63) / 64 * 64),
      scratch_(scratch_stride_ * static_cast<size_t>(std::max(threads, 1))) {
    const int count = tensor_count();
    const int op_count = static_cast<int>(ops.size());
    std::vector<int> last_use(count, -1), producer(count, -1);
    for (int i = 0; i < op_count; ++i) {
        for (int t : ops[i].inputs) last_use[t] = i;
        if (ops[i].output >= 0) {
            if (producer[ops[i].output] >= 0) throw std::invalid_argument("plan writes a tensor twice");
            producer[ops[i].output] = i;
        }
    }
    for (int i = 0; i < op_count; ++i)
        for (int t : ops[i].inputs)
            if (producer[t] < 0 || producer[t] >= i) throw std::invalid_argument("plan reads a tensor before it is written");
    // Each output takes the free slot closest in size to it, or a new one; an op's inputs free their slots
    // after its output is placed, so an op never writes over what it reads.
    slot_of_.assign(count, -1);
    std::vector<int> free_slots;
    auto distance = [&](int slot, size_t size) { return std::abs(static_cast<long>(slot_sizes_[slot]) - static_cast<long>(size)); };
    for (int i = 0; i < op_count; ++i) {
        const int t = ops[i].output;
        if (t >= 0) {
            int best = -1;
            for (size_t f = 0; f < free_slots.size(); ++f)
                if (best < 0 || distance(free_slots[f], tensor_sizes_[t]) < distance(free_slots[best], tensor_sizes_[t]))
                    best = static_cast<int>(f);
            if (best >= 0) {
                slot_of_[t] = free_slots[best];
                slot_sizes_[slot_of_[t]] = std::max(slot_sizes_[slot_of_[t]], tensor_sizes_[t]);
                free_slots.erase(free_slots.begin() + best);
            } else {
                slot_of_[t] = static_cast<int>(slot_sizes_.size());
                slot_sizes_.push_back(tensor_sizes_[t]);
            }
        }
        for (int input : ops[i].inputs)
            if (last_use[input] == i && std::find(free_slots.begin(), free_slots.end(), slot_of_[input]) == free_slots.end())
                free_slots.push_back(slot_of_[input]);
    }
}

Arena& MemoryPlanner::arena(int batch, int group) {
    const std::pair<int, int> key{batch, group};
    auto found = arenas_.find(key);
    if (found != arenas_.end()) return found->second;
    for (auto it = arenas_.begin(); arenas_.size() >= 8 && it != arenas_.end();)
        it = it->first.first != batch ? arenas_.erase(it) : std::next(it);
    Arena& arena = arenas_[key];
    for (size_t size : slot_sizes_) arena.slots.emplace_back(size * batch + 64);
    arena.workspace.resize((workspace_per_sample_ * batch + 1) / 2 + 32);
    return arena;
}

}  // namespace edge
