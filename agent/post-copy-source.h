// Source side of a post-copy migration, from the end of the bundle to the
// last page: the lazy dump (container frozen, CRIU's page server on
// 127.0.0.1) and the thread that pumps its pages to the target over the TLS
// page channel.
//
// The pump ending cleanly (the target's lazy-pages daemon has every page)
// lets CRIU finish, which kills the frozen container here. A cut page channel
// leaves it frozen until giveBack(), which makes CRIU fail on purpose so that
// it resumes the container (Agent::abortLazyCheckpoint): never both at once,
// because the coordinator asks for it back (rollbackSource) only after the
// target dropped its copy.
//
// It owns the dump, both sockets and its thread; the thread is joined by
// whoever calls waitForPages, giveBack or the destructor first, exactly once
// (joined_; without a thread, the once is the dump's abort).
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

#include "agent/agent.h"
#include "common/fd.h"
#include "net/tls-pump.h"
#include "net/tls-stream.h"

namespace migrate {

struct PagesStats {
  uint64_t pagesNs = 0;     // from the page channel's start to the last page
  uint64_t bytesPages = 0;  // sent over it
};

class PostCopySource {
 public:
  PostCopySource(Agent& agent, std::string migrationId, std::string containerName, LazyDump dump);
  ~PostCopySource();  // as giveBack() if the pages did not all go
  PostCopySource(const PostCopySource&) = delete;
  PostCopySource& operator=(const PostCopySource&) = delete;

  const std::string& migrationId() const { return migrationId_; }
  const std::string& containerName() const { return containerName_; }
  LazyDump& dump() { return dump_; }

  // Connects to CRIU's page server and starts pumping between it and
  // `pageChannel` (the sender's second connection to the target). Called
  // once, before the object is shared with another thread.
  void start(TlsStream pageChannel);

  // Until every page went and CRIU finished (returns the figures), the pump
  // failed (throws Failed "page transfer failed: ...", the container still
  // frozen here for giveBack) or `timeout` passed (Disconnected). Calls
  // `onProgress(sent, total)` every 200 ms meanwhile.
  PagesStats waitForPages(std::chrono::milliseconds timeout,
                          const std::function<void(uint64_t sent)>& onProgress);

  // The container back on this host, running: CRIU resumes it (the pump is
  // stopped first if it still runs; never started, the dump is aborted).
  // Idempotent, any thread.
  void giveBack();

  // Shutdown: a transfer still flowing is let finish (the target runs the
  // container and needs every page); a cut one gives the container back.
  void finishForShutdown();

 private:
  void pumpPages();  // the thread
  void join();

  Agent& agent_;
  const std::string migrationId_;
  const std::string containerName_;
  LazyDump dump_;
  std::optional<TlsStream> pageStream_;  // the thread's, once started
  Fd criuSocket_;                        // the thread's, once started
  PumpCounters counters_;
  std::atomic<bool> stop_{false};
  std::chrono::steady_clock::time_point pumpStart_;
  std::thread thread_;
  bool started_ = false;  // set by start(), before anyone else sees us
  std::once_flag joined_;

  std::mutex mutex_;  // guards the fields below
  std::condition_variable cv_;
  bool pagesDone_ = false;  // the pump ended: cleanly, or error_
  bool finished_ = false;   // CRIU exited too (the thread is done)
  bool resume_ = false;     // giveBack asked for the container back
  std::exception_ptr error_;
  uint64_t pagesNs_ = 0;
};

}  // namespace migrate
