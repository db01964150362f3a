// A downtime budget (`migrate CTR --to HOST --max-downtime 500ms`, as QEMU's
// downtime-limit and KubeVirt's allowPostCopy): before anything is frozen,
// the coordinator estimates what a stop-and-copy would cost from what the
// checkpoint would move (the source's measureCheckpoint) and from what the
// last stop-and-copy between the same two hosts achieved, and moves the
// container post-copy instead when the estimate misses the budget.
//
// The model is one rate and one overhead: downtime = kFixedMs + bytes /
// rate, bytes being memory, the writable layer and a tar header's worth per
// file. A measured migration gives its own rate (its tar bytes over its
// downtime past the overhead), which carries whatever that pair's dump,
// wire and restore cost per byte; without one the rate is kAssumedRate, a
// little under what this 2-core lab achieves (docs/benchmarks.md).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "coordinator/journal.h"

namespace migrate {

struct CheckpointMeasure {
  uint64_t memoryBytes = 0;
  uint64_t rootfsDiffBytes = 0;
  uint64_t rootfsDiffEntries = 0;
  uint64_t bytes() const;  // what the bundle would carry, headers included
};

struct DowntimeEstimate {
  double ms = 0;
  double bytesPerSecond = 0;
  std::string basis;  // how it was made, for the operator
};

constexpr double kFixedDowntimeMs = 300;
constexpr double kAssumedBytesPerSecond = 80.0 * (1 << 20);

// `history`: newest first (Journal::history). The last succeeded
// stop-and-copy between `a` and `b`, either way, sets the rate.
DowntimeEstimate estimateStopAndCopy(const CheckpointMeasure& measure, const std::vector<MigrationRecord>& history,
                                     const std::string& a, const std::string& b);

}  // namespace migrate
