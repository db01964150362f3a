// The post-copy page relay: one process per side of a post-copy migration
// (`migrate-page-relay DIR`), started by the agent with setsid so that it
// outlives the agent's crash or restart (docs/design-notes.md, "Post-copy
// survives the agents").
//
// Source: connected to CRIU's page server (the frozen container's memory)
// and, over TLS, to the target's relay; it reconnects when the channel is
// cut, with the key it has or a fresh one (SIGUSR1).
// Target: the parent of `criu lazy-pages`, which holds the userfaultfds of
// the restored processes; it accepts the source's connections on the
// receiver's port and holds a copy of every userfaultfd, so that lazy-pages
// dying does not let a faulting process run on a zero page: the faults stay
// blocked, and the relay freezes the container's cgroup.
//
// Both speak CRIU's protocol (page-server-protocol.h) only as far as needed
// to ask again, after a cut, for what was not answered.
#pragma once

#include <atomic>
#include <filesystem>

#include "agent/page-relay-files.h"

namespace migrate {

// Runs the relay of `dir` (its spec.json) until every page went or it was
// told to stop; writes status.json as it goes. Returns the exit code.
int runPageRelay(const std::filesystem::path& dir);

}  // namespace migrate
