// What a paused post-copy migration does next, decided from what the two
// page relays report (postCopyStatus), and what an operator's `abandon`
// costs. Pure functions: Migration (migration.cpp) asks the agents and acts.
//
// After switchover the target runs the container and has acknowledged
// writes; the source's frozen copy is history. So nothing here ever decides
// to roll back: only an operator may drop a side (KeepSide), told what is
// lost (docs/design-notes.md "Post-copy failures after switchover pause,
// never roll back").
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "schema/control.capnp.h"

namespace migrate {

using RelayState = proto::PostCopyRelayState;

// "absent", "starting", "flowing", "cut", "done", "failed".
std::string_view relayStateName(RelayState state);

// One side's postCopyStatus reply.
struct RelayReport {
  std::string host;
  RelayState state = RelayState::ABSENT;
  std::string error;             // why `cut` or `failed`
  uint32_t outstandingRequests = 0;  // target: page requests not fully answered
  uint64_t bytesPages = 0;

  static RelayReport fromProto(std::string host, proto::PostCopyStatus::Reader status);
};

enum class RecoveryStep {
  AwaitPages,  // Back to `restoring`: ask finishPostCopy again (the source's `done` makes it answer at once).
  Reconnect,   // A fresh key to both relays (resumePostCopy, target first), then AwaitPages.
  StayPaused,  // Only an operator can decide (a relay failed), or nothing to do yet.
};

struct RecoveryDecision {
  RecoveryStep step = RecoveryStep::StayPaused;
  std::string reason;  // StayPaused: why, naming the host and its part
};

// `targetRunsContainer`: the target lists the container as running (asked
// only when its relay is absent).
RecoveryDecision decideRecovery(const RelayReport& source, const RelayReport& target, bool targetRunsContainer);

enum class KeepSide { Source, Target };
std::string_view keepSideName(KeepSide side);
// Error(InvalidInput) naming the field for anything but "source" or "target".
KeepSide keepSideFromName(std::string_view name);

// Why keeping the target is refused, or nothing when it has every page: its
// own relay is `done`, or the source's is (the last page went).
std::optional<std::string> refusalToKeepTarget(const RelayReport& source, const RelayReport& target);

// What keeping the source loses: "writes made on host2 in the 6.1 s since
// switchover".
std::string lostByKeepingSource(const std::string& target, int64_t switchoverAtMs, int64_t nowMs);

}  // namespace migrate
