// Plans the evacuation of a host: one migration per running container, each
// to the candidate with the most free memory left after what was already
// planned for it (greedy, biggest containers first).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace migrate {

struct EvacuationCandidate {
  std::string host;
  uint64_t memAvailableBytes = 0;
  bool up = true;
};

struct EvacuationItem {
  std::string container;
  uint64_t memBytes = 0;  // 0: unknown, planned as kDefaultContainerMemory.
};

struct PlannedMove {
  std::string container;
  std::string target;
};

struct EvacuationPlan {
  std::vector<PlannedMove> moves;
  std::vector<std::pair<std::string, std::string>> unplaced;  // container, reason
};

// What a container of unknown size is assumed to need.
constexpr uint64_t kDefaultContainerMemory = 64ull << 20;
// Kept free on every target after placing containers.
constexpr uint64_t kTargetMemoryReserve = 64ull << 20;

EvacuationPlan planEvacuation(const std::string& source, std::vector<EvacuationItem> containers,
                              std::vector<EvacuationCandidate> candidates);

}  // namespace migrate
