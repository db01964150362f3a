// Waiting on observable state rather than sleeping for a guessed time: a
// test polls what it can see (a journal state, a log line, a port) until it
// holds or a deadline passes, so it is as fast as the system and fails with
// a deadline rather than flaking on a slow machine. Every test binary links it.
#pragma once

#include <chrono>
#include <functional>

namespace migrate::test {

// Polls `condition` every `interval` until it holds or `timeout` passes
// (its last poll is after the deadline); returns whether it held.
bool waitUntil(const std::function<bool()>& condition, std::chrono::milliseconds timeout,
               std::chrono::milliseconds interval = std::chrono::milliseconds(50));

// Whether `condition` holds at every poll for the whole of `duration`: for
// what must *not* happen (a host still up, a migration still waiting).
// Returns false at the first poll where it does not.
bool holdsFor(const std::function<bool()>& condition, std::chrono::milliseconds duration,
              std::chrono::milliseconds interval = std::chrono::milliseconds(50));

}  // namespace migrate::test
