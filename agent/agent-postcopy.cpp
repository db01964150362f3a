// Agent, post-copy (docs/design-notes.md): the source's lazy checkpoint,
// its completion or undoing, and the target's lazy-pages daemon.
#include "agent/agent.h"

#include "agent/container-processes.h"
#include "agent/criu-network-lock.h"
#include "common/error.h"
#include "common/log.h"

namespace migrate {

using Clock = std::chrono::steady_clock;

LazyDump Agent::startLazyCheckpoint(const std::string& ref, const CheckpointRequest& request, uint16_t port,
                                    PhaseTimes* times) {
  std::lock_guard lock(mutex_);
  auto c = inspect(ref);
  ErrorContext context("post-copy checkpoint of `" + c.config.name + "`");
  if (c.state.status != ContainerStatus::Running) {
    fail(ErrorKind::Conflict, "container is " + statusName(c.state.status) + ", not running");
  }
  checkLazyPagesSupported();
  prepareCheckpointDirectory(c.paths.checkpoint());
  auto start = Clock::now();
  auto dump = runtime_.startLazyCheckpoint(c.config.id, c.paths, CheckpointOptions{request.tcpEstablished, false}, port);
  if (times) times->add("dump", secondsSince(start));
  recordCheckpoint(c, request);
  save(c);
  // The target is about to claim the same address (one IPAM for the
  // cluster): give it up, keeping the netns the frozen processes live in.
  network_.releaseAddress(c);
  logInfo("`" + c.config.name + "` frozen; serving its memory on 127.0.0.1:" + std::to_string(port));
  return dump;
}

Container Agent::finishLazyCheckpoint(const std::string& ref, LazyDump& dump) {
  // Not under the agent's lock: the transfer lasts as long as the target's
  // lazy-pages daemon keeps fetching.
  auto c = inspect(ref);
  ErrorContext context("post-copy of `" + c.config.name + "`");
  try {
    runtime_.finishLazyCheckpoint(c.config.id, c.paths, dump);
  } catch (...) {
    std::lock_guard lock(mutex_);
    try {
      // CRIU resumed it on its own: its sockets may have run in repair mode
      // for a moment (reads fail with EPERM), the best we can do now.
      auto resumed = inspect(ref);
      if (!dump.networkReleased) {
        network_.reattachAddress(resumed);
        undoCriuNetworkLock(resumed);
      }
    } catch (const std::exception& e) {
      logWarn("after the failed post-copy of `" + c.config.name + "`: " + e.what());
    }
    throw;
  }
  std::lock_guard lock(mutex_);
  c = inspect(ref);
  markCheckpointed(c);
  save(c);
  logInfo("post-copy of `" + c.config.name + "` complete: every page went");
  return c;
}

Container Agent::abortLazyCheckpoint(const std::string& ref, LazyDump& dump, Fd pageServer) {
  {
    std::lock_guard lock(mutex_);
    auto c = inspect(ref);
    ErrorContext context("giving `" + c.config.name + "` back after a post-copy that did not complete");
    // While CRIU still holds the processes stopped: once they run, a read on
    // a socket still in repair mode fails (EPERM) and the program drops the
    // connection.
    try {
      network_.reattachAddress(c);
      undoCriuNetworkLock(c);
    } catch (const std::exception& e) {
      // Still better running without its network than frozen for good.
      logError(std::string("`") + c.config.name + "` resumes without its network: " + e.what());
    }
    dump.networkReleased = true;
    runtime_.abortLazyCheckpoint(dump, std::move(pageServer));
  }
  try {
    return finishLazyCheckpoint(ref, dump);  // CRIU finished after all: the container is gone here
  } catch (const std::exception& e) {
    logInfo("post-copy of `" + ref + "` undone, the container runs here again (" + e.what() + ")");
  }
  return inspect(ref);
}

uint64_t Agent::residentBytes(const std::string& ref) { return migrate::residentBytes(inspect(ref).state.pid); }

Subprocess Agent::startLazyPages(const std::string& ref, uint16_t port) {
  auto c = inspect(ref);
  ErrorContext context("lazy-pages daemon for `" + c.config.name + "`");
  return runtime_.startLazyPages(c.paths, port);
}

}  // namespace migrate
