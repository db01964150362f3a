#include "coordinator/evacuation-planner.h"

#include <algorithm>

namespace migrate {

EvacuationPlan planEvacuation(const std::string& source, std::vector<EvacuationItem> containers,
                              std::vector<EvacuationCandidate> candidates) {
  EvacuationPlan plan;
  std::erase_if(candidates, [&](const EvacuationCandidate& c) { return c.host == source || !c.up; });
  // Biggest first, so the large ones still find room; names break ties so
  // the same input always gives the same plan.
  std::sort(containers.begin(), containers.end(), [](const EvacuationItem& a, const EvacuationItem& b) {
    uint64_t sa = a.memBytes ? a.memBytes : kDefaultContainerMemory;
    uint64_t sb = b.memBytes ? b.memBytes : kDefaultContainerMemory;
    return sa != sb ? sa > sb : a.container < b.container;
  });
  for (auto& item : containers) {
    uint64_t need = (item.memBytes ? item.memBytes : kDefaultContainerMemory) + kTargetMemoryReserve;
    EvacuationCandidate* best = nullptr;
    for (auto& c : candidates) {
      if (c.memAvailableBytes < need) continue;
      if (!best || c.memAvailableBytes > best->memAvailableBytes ||
          (c.memAvailableBytes == best->memAvailableBytes && c.host < best->host)) {
        best = &c;
      }
    }
    if (!best) {
      plan.unplaced.emplace_back(item.container, candidates.empty()
                                                     ? "no target host is up"
                                                     : "no target has " + std::to_string(need >> 20) +
                                                           " MiB of memory available");
      continue;
    }
    best->memAvailableBytes -= need - kTargetMemoryReserve;
    plan.moves.push_back({item.container, best->host});
  }
  return plan;
}

}  // namespace migrate
