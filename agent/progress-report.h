// How a transfer tells the coordinator where it is: the daemon turns each
// report into a `progress` message (bytes done of total in a phase, or the
// failure that ended it) and queues it for the control loop.
#pragma once

#include <cstdint>
#include <exception>
#include <functional>
#include <string>

#include "common/phase.h"

namespace migrate {

struct ProgressReport {
  std::string migrationId;
  uint64_t requestId = 0;  // the coordinator's request this work answers
  Phase phase = Phase::Pending;  // Checkpoint, Stream, Receive, Pages
  uint64_t done = 0;
  uint64_t total = 0;      // 0: not known
  const std::exception* failure = nullptr;  // set when this report is the end of it
};

// Any thread; never blocks for long (it only queues).
using ReportProgress = std::function<void(const ProgressReport&)>;

}  // namespace migrate
