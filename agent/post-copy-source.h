// Source side of a post-copy migration, from the end of the bundle to the
// last page: the lazy dump (container frozen, CRIU's page server on
// 127.0.0.1) and the page relay process that carries its pages to the
// target (page-relay.h), watched by one thread here.
//
// The relay reporting `done` (the target's lazy-pages has every page) lets
// CRIU finish, which kills the frozen container here. A cut channel is the
// relay's to mend (it reconnects); the container stays frozen meanwhile,
// and after the target ran it is history: only giveBack() — the operator's
// `abandon --keep source` — makes CRIU resume it (the relay makes CRIU's
// page server fail on purpose, Agent::abortLazyCheckpoint).
//
// The relay outlives this agent: on shutdown leave() lets it (and CRIU)
// go on; a restarted agent answers for it from its directory
// (PageRelayHandle::open). This object also holds a copy of the relay's
// CRIU socket: if the relay died, CRIU would read an end of file as "every
// page went" and kill the only complete copy of the container's memory.
//
// It owns the dump, the relay handle and its thread; the thread is joined
// exactly once (joined_; without a thread, the once is the dump's abort).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "agent/agent.h"
#include "agent/page-relay-handle.h"
#include "common/fd.h"

namespace migrate {

struct PagesStats {
  uint64_t pagesNs = 0;     // from the page channel's start to the last page
  uint64_t bytesPages = 0;  // sent over it
  uint32_t reconnects = 0;  // of the page channel, after cuts
};

// How long finishPostCopy waits on a cut channel before it reports it
// (the coordinator then pauses the migration; the relay keeps trying).
constexpr std::chrono::milliseconds kPageChannelCutBudget{30000};

class PostCopySource {
 public:
  PostCopySource(Agent& agent, std::string migrationId, std::string containerName, LazyDump dump);
  ~PostCopySource();  // as giveBack() if the pages did not all go, unless left
  PostCopySource(const PostCopySource&) = delete;
  PostCopySource& operator=(const PostCopySource&) = delete;

  const std::string& migrationId() const { return migrationId_; }
  const std::string& containerName() const { return containerName_; }
  LazyDump& dump() { return dump_; }

  // Starts the relay towards the target's receiver port and the thread that
  // watches it. Called once, before the object is shared with another thread.
  void start(const std::string& targetAddress, uint16_t targetPort, const std::vector<uint8_t>& psk);

  // Until every page went and CRIU finished (returns the figures), the relay
  // failed (throws Failed "page transfer failed: ...", the container still
  // frozen here), the channel stayed cut for kPageChannelCutBudget (Failed
  // "page channel cut ...") or `timeout` passed (Disconnected). Calls
  // `onProgress(sent)` every 200 ms meanwhile. May be called again.
  PagesStats waitForPages(std::chrono::milliseconds timeout,
                          const std::function<void(uint64_t sent)>& onProgress);

  // The container back on this host, running: CRIU resumes it (the relay
  // is stopped first; never started, the dump is aborted). Idempotent.
  void giveBack();

  // Shutdown: the relay and CRIU go on without us (a restarted agent adopts
  // them); nothing is given back.
  void leave();

 private:
  void watch();  // the thread
  void join();

  Agent& agent_;
  const std::string migrationId_;
  const std::string containerName_;
  LazyDump dump_;
  std::optional<PageRelayHandle> relay_;  // set by start()
  Fd criuCopy_;                           // the thread's
  std::chrono::steady_clock::time_point start_;
  std::thread thread_;
  bool started_ = false;  // set by start(), before anyone else sees us
  std::once_flag joined_;

  std::mutex mutex_;  // guards the fields below
  std::condition_variable cv_;
  PageRelayStatus last_;
  bool finished_ = false;  // CRIU exited after the last page, or the thread gave up
  bool resume_ = false;    // giveBack asked for the container back
  bool left_ = false;      // leave(): the thread ends, the relay goes on
  std::exception_ptr error_;
  uint64_t pagesNs_ = 0;
};

}  // namespace migrate
