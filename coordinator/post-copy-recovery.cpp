#include "coordinator/post-copy-recovery.h"

#include <cstdio>

#include "common/error.h"

namespace migrate {

std::string_view relayStateName(RelayState state) {
  switch (state) {
    case RelayState::ABSENT: return "absent";
    case RelayState::STARTING: return "starting";
    case RelayState::FLOWING: return "flowing";
    case RelayState::CUT: return "cut";
    case RelayState::DONE: return "done";
    case RelayState::FAILED: return "failed";
  }
  return "unknown";
}

RelayReport RelayReport::fromProto(std::string host, proto::PostCopyStatus::Reader status) {
  RelayReport r;
  r.host = std::move(host);
  r.state = status.getState();
  r.error = status.getError().cStr();
  r.outstandingRequests = status.getOutstandingRequests();
  r.bytesPages = status.getBytesPages();
  return r;
}

namespace {

std::string failure(const RelayReport& side) {
  return side.host + ": page relay failed" + (side.error.empty() ? std::string() : ": " + side.error);
}

}  // namespace

RecoveryDecision decideRecovery(const RelayReport& source, const RelayReport& target, bool targetRunsContainer) {
  using S = RelayState;
  // The last page went: finishPostCopy answers at once, and the move commits.
  if (source.state == S::DONE) return {RecoveryStep::AwaitPages, {}};
  if (source.state == S::FAILED) {
    if (target.state == S::DONE) {
      return {RecoveryStep::StayPaused, target.host + " has every page but " + failure(source) +
                                            "; `abandon --keep target` commits the move"};
    }
    // Both: the target's is the cause (its relay tells the source it gave up).
    if (target.state == S::FAILED) return {RecoveryStep::StayPaused, failure(target)};
    return {RecoveryStep::StayPaused, failure(source)};
  }
  // A dead lazy-pages or relay on the target: its processes wait (frozen)
  // for pages nobody will ask for any more. Not ours to decide.
  if (target.state == S::FAILED) return {RecoveryStep::StayPaused, failure(target)};
  // The target has it all; the source's CRIU sees the end at once.
  if (target.state == S::DONE) return {RecoveryStep::AwaitPages, {}};
  if (source.state == S::CUT || target.state == S::CUT) return {RecoveryStep::Reconnect, {}};
  if (target.state == S::ABSENT && !targetRunsContainer) {
    return {RecoveryStep::StayPaused,
            target.host + " has no page relay for the migration and does not run the container"};
  }
  if (source.state == S::ABSENT) {
    return {RecoveryStep::StayPaused,
            source.host + " has no page relay for the migration: nothing serves the pages " + target.host +
                " may still need"};
  }
  // Starting or flowing on both sides (an agent that was away came back and
  // its relay never stopped): wait for the pages again.
  return {RecoveryStep::AwaitPages, {}};
}

std::string_view keepSideName(KeepSide side) { return side == KeepSide::Source ? "source" : "target"; }

KeepSide keepSideFromName(std::string_view name) {
  if (name == "source") return KeepSide::Source;
  if (name == "target") return KeepSide::Target;
  fail(ErrorKind::InvalidInput, "field `keep` is `" + std::string(name) + "`, not `source` or `target`");
}

std::optional<std::string> refusalToKeepTarget(const RelayReport& source, const RelayReport& target) {
  if (target.state == RelayState::DONE || source.state == RelayState::DONE) return std::nullopt;
  std::string waits = target.outstandingRequests
                          ? std::to_string(target.outstandingRequests) + " page request" +
                                (target.outstandingRequests == 1 ? "" : "s")
                          : "pages (relay " + std::string(relayStateName(target.state)) + ")";
  return target.host + " still waits for " + waits + " from " + source.host + "; keeping " + target.host +
         "'s copy would run it on memory it never received — recover, or keep the source";
}

std::string lostByKeepingSource(const std::string& target, int64_t switchoverAtMs, int64_t nowMs) {
  if (switchoverAtMs <= 0) return "writes made on " + target + " since switchover (its time was not recorded)";
  char seconds[32];
  std::snprintf(seconds, sizeof seconds, "%.1f", double(std::max<int64_t>(0, nowMs - switchoverAtMs)) / 1000.0);
  return "writes made on " + target + " in the " + seconds + " s since switchover";
}

}  // namespace migrate
