#include "common/phase.h"

namespace migrate {

std::string_view phaseName(Phase phase) {
  // No default: -Wswitch names a phase added without its name.
  switch (phase) {
    case Phase::Pending: return "pending";
    case Phase::Precheck: return "precheck";
    case Phase::Image: return "image";
    case Phase::Prepare: return "prepare";
    case Phase::Checkpoint: return "checkpoint";
    case Phase::Stream: return "stream";
    case Phase::Receive: return "receive";
    case Phase::Restore: return "restore";
    case Phase::Pages: return "pages";
    case Phase::Commit: return "commit";
    case Phase::Rollback: return "rollback";
    case Phase::Done: return "done";
  }
  return "done";  // not an enumerator: only a cast could make one
}

std::optional<Phase> phaseFromName(std::string_view name) {
  for (int i = static_cast<int>(Phase::Pending); i <= static_cast<int>(Phase::Done); ++i) {
    if (phaseName(static_cast<Phase>(i)) == name) return static_cast<Phase>(i);
  }
  return std::nullopt;
}

}  // namespace migrate
