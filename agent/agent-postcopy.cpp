// Agent, post-copy (docs/design-notes.md): the source's lazy checkpoint,
// its completion or undoing, and the target's lazy-pages daemon.
#include "agent/agent.h"

#include "agent/container-processes.h"
#include "agent/criu-network-lock.h"
#include "common/error.h"
#include "common/log.h"
#include "common/syscalls.h"

#include <poll.h>
#include <signal.h>

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

namespace {

// A `runc checkpoint` an earlier run of this agent started is not our child:
// its exit status is init's. Waits for it to end.
void waitForAdoptedRunc(pid_t runcPid, const char* after) {
  int pidfd = sys::pidfdOpen(runcPid);
  if (pidfd < 0) return;  // gone already
  Fd guard(pidfd);
  pollfd p{pidfd, POLLIN, 0};
  if (::poll(&p, 1, 60000) == 0) {
    fail("runc checkpoint (pid " + std::to_string(runcPid) + ") still runs " + after);
  }
}

}  // namespace

void Agent::finishAdoptedLazyCheckpoint(const std::string& ref, pid_t runcPid) {
  ErrorContext context("post-copy of `" + ref + "` started by an earlier run of this agent");
  // What tells how the dump ended is whether the frozen processes are gone
  // (CRIU kills them once the dump completed) or running again (it failed
  // and resumed them).
  waitForAdoptedRunc(runcPid, "after the last page");
  std::lock_guard lock(mutex_);
  auto c = inspect(ref);
  if (c.state.pid > 0 && ::kill(c.state.pid, 0) == 0) {
    fail(ErrorKind::Failed, "CRIU resumed `" + c.config.name + "` here instead of finishing its dump");
  }
  markCheckpointed(c);
  save(c);
  logInfo("post-copy of `" + c.config.name + "` complete: every page went");
}

// The address back and CRIU's lock undone while CRIU still holds the
// processes stopped: once they run, a read on a socket still in repair mode
// fails (EPERM) and the program drops the connection.
void Agent::reclaimNetworkWhileFrozen(Container& c) {
  try {
    network_.reattachAddress(c);
    undoCriuNetworkLock(c);
  } catch (const std::exception& e) {
    // Still better running without its network than frozen for good.
    logError(std::string("`") + c.config.name + "` resumes without its network: " + e.what());
  }
}

Container Agent::giveBackAdoptedLazyCheckpoint(const std::string& ref, pid_t runcPid,
                                              const std::function<void()>& failCriu) {
  {
    std::lock_guard lock(mutex_);
    auto c = inspect(ref);
    ErrorContext context("giving `" + c.config.name + "` back (a post-copy an earlier run of this agent started)");
    reclaimNetworkWhileFrozen(c);
    failCriu();
  }
  waitForAdoptedRunc(runcPid, "after its page server failed");
  auto c = inspect(ref);
  if (c.state.pid <= 0 || ::kill(c.state.pid, 0) != 0) {
    fail(ErrorKind::Failed, "`" + c.config.name + "` did not come back: CRIU finished its dump instead");
  }
  logInfo("post-copy of `" + c.config.name + "` undone, the container runs here again");
  return c;
}

Container Agent::abortLazyCheckpoint(const std::string& ref, LazyDump& dump, Fd pageServer,
                                     const std::function<void()>& failCriu) {
  {
    std::lock_guard lock(mutex_);
    auto c = inspect(ref);
    ErrorContext context("giving `" + c.config.name + "` back after a post-copy that did not complete");
    reclaimNetworkWhileFrozen(c);
    dump.networkReleased = true;
    if (failCriu) {
      failCriu();
    } else {
      runtime_.abortLazyCheckpoint(dump, std::move(pageServer));
    }
  }
  try {
    return finishLazyCheckpoint(ref, dump);  // CRIU finished after all: the container is gone here
  } catch (const std::exception& e) {
    logInfo("post-copy of `" + ref + "` undone, the container runs here again (" + e.what() + ")");
  }
  return inspect(ref);
}

uint64_t Agent::residentBytes(const std::string& ref) { return migrate::residentBytes(inspect(ref).state.pid); }

PageRelaySpec Agent::lazyPagesRelaySpec(const std::string& ref) {
  auto c = inspect(ref);
  ErrorContext context("lazy-pages daemon for `" + c.config.name + "`");
  PageRelaySpec spec;
  spec.role = RelayRole::Target;
  spec.containerName = c.config.name;
  spec.lazyPagesArgs = runtime_.lazyPagesCommand(c.paths);
  spec.lazyPagesSocket = Runtime::lazyPagesSocket(c.paths).string();
  spec.imagesDir = c.paths.checkpoint().string();
  spec.cgroup = cgroupsPath(c.config.id);
  return spec;
}

}  // namespace migrate
