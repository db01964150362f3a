// The phases of a migration, one set for the coordinator (live progress and
// the timed steps in a migration's stats), the agents' progress messages and
// the CLI. On the wire (Progress.phase) and in the HTTP API a phase is its
// name; names are converted here and nowhere else, so a new phase is added
// in one place (and then to the docs that list them).
#pragma once

#include <optional>
#include <string_view>

namespace migrate {

// Pending first and Done last: phaseFromName walks the range between them.
enum class Phase {
  Pending,     // journalled, not started
  Precheck,    // read-only checks on both hosts
  Image,       // the target lacks the container's image: the source sends it
  Prepare,     // the target reserves a port and a landing directory
  Checkpoint,  // the source freezes and dumps the container (CRIU)
  Stream,      // the source sends the bundle
  Receive,     // the target takes the bundle in
  Restore,     // the target restores and runs the container
  Pages,       // post-copy: the source serves memory pages the target faults on
  Commit,      // the owners table names the target; the source cleans up
  Rollback,    // undoing on both hosts
  Done,        // final, whatever the outcome
};

// "precheck", "stream", ...: the names the API, the CLI and the tests read.
std::string_view phaseName(Phase phase);
// Empty for a name this build does not know (a newer peer's phase).
std::optional<Phase> phaseFromName(std::string_view name);

// The phases a migration's stats time (stats.phases.<name>, in ms), in the
// order they run; the CLI's report prints them in this order.
inline constexpr Phase kTimedPhases[] = {Phase::Precheck, Phase::Prepare, Phase::Checkpoint, Phase::Stream,
                                         Phase::Restore,  Phase::Pages,   Phase::Commit};

}  // namespace migrate
