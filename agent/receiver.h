// One incoming migration on the target, from prepareReceive to the end of
// its restore (or abort): the listener, the receive thread that imports the
// bundle as it arrives, and for post-copy the page thread that feeds CRIU's
// lazy-pages daemon from the source.
//
// The receiver owns its threads and everything they touch (listener, TLS
// streams, the lazy-pages daemon): nobody else reads or closes them. Others
// act on it only through stop(), which every thread polls (accept, TLS reads
// and writes, the page pump), and through restore(). Its threads are joined
// by its destructor alone, which its owner (ReceiverSet) runs only once they
// have all returned or been told to stop -- never from one of them.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "agent/agent.h"
#include "agent/bundle-signature.h"
#include "agent/id-mapping.h"
#include "agent/page-relay-handle.h"
#include "agent/progress-report.h"
#include "agent/userfaultfd-copies.h"
#include "net/tls-stream.h"

namespace migrate {

class DataListener;

// What the coordinator's prepareReceive asked for.
struct ReceiverSpec {
  std::string migrationId;
  uint64_t requestId = 0;     // prepareReceive's: a failed receive is reported against it
  std::string containerName;  // reserved: no other receiver takes this name
  std::vector<uint8_t> psk;
  std::string expectedImage;  // digest, or empty
  // The source's user namespace mapping; the bundle must carry the same.
  std::optional<IdMapping> idMapping;
  BundleTrust trust;  // exactly the source's key, as the coordinator has it
  bool postCopy = false;
  std::chrono::milliseconds acceptTimeout{60000};  // for the sender to connect and prove the key
};

struct RestoreAsk {
  std::string expectedSha256;  // what the source sent; empty: not checked
  bool tcpEstablished = false;
  bool postCopy = false;
};

struct Restored {
  Container container;
  PhaseTimes times;  // ours and CRIU's ("criu-forking", "criu-restore")
  uint64_t restoreNs = 0;
  std::string sha256;  // of the bundle received
};

// The target side of a post-copy once the container runs: waits for its page
// relay to end; after the last page, drops the checkpoint lazy-pages read
// and the relay's directory. Returns why it ended early ("" after the last
// page). Also how a restarted agent follows a relay its predecessor started.
//
// `copies` is the second holder of lazy-pages' userfaultfds (the relay is
// the first): if the relay dies, lazy-pages loses its page source and exits,
// and the faults would then read zeros; the copies keep them waiting, the
// container is frozen, and they go only with the container.
std::string followTargetRelay(Agent& agent, const PageRelayHandle& relay, const std::string& containerRef,
                              const std::string& name, const std::atomic<bool>& stop, UserfaultfdCopies& copies);

class Receiver {
 public:
  // Called exactly once when the receiver is over: `failure` empty if its
  // migration restored here, else why it ended. From any of its threads or
  // restore's; it must not destroy the receiver.
  using OnEnd = std::function<void(Receiver&, const std::string& failure)>;

  Receiver(Agent& agent, ReceiverSpec spec, ReportProgress report, OnEnd onEnd);
  ~Receiver();  // stops and joins its threads
  Receiver(const Receiver&) = delete;
  Receiver& operator=(const Receiver&) = delete;

  const ReceiverSpec& spec() const { return spec_; }

  // Listens on `dataAddress` and starts the receive thread; returns the port
  // the sender is to connect to.
  uint16_t start(const std::string& dataAddress);

  // The restore step: waits (up to `bundleWait`) for the bundle, checks its
  // digest, restores. Post-copy: the page thread goes on feeding the
  // container's memory and ends the receiver after the last page; a failed
  // restore stops it (and kills its lazy-pages daemon).
  Restored restore(const RestoreAsk& ask, std::chrono::milliseconds bundleWait);

  // Any thread, any number of times: every thread of this receiver gives up
  // within a fraction of a second. Returns true once none runs, false if
  // some still did after `timeout` (an import cleaning up after itself).
  bool stop(std::chrono::milliseconds timeout);
  bool finished();  // none of its threads runs any more

  // Ends the receiver now, as onEnd does it (the first end wins).
  void end(const std::string& failure);

 private:
  // The receive thread: the sender, the bundle, the digest back; for
  // post-copy then the page channel and the lazy-pages daemon.
  void receive(std::shared_ptr<DataListener> listener);
  std::string importBundle(TlsStream& tls, Container* imported);
  void checkManifest(const nlohmann::json& manifest);
  void startPageThread();
  // The page thread: watches the page relay (lazy-pages and the channel).
  void watchRelay();
  void launch(std::thread& slot, std::function<void()> body);
  void waitForBundle(std::chrono::milliseconds timeout);
  void report(Phase phase, uint64_t done, const std::exception* failure = nullptr);

  Agent& agent_;
  const ReceiverSpec spec_;
  ReportProgress report_;
  OnEnd onEnd_;
  std::once_flag ended_;
  std::atomic<bool> stop_{false};

  std::mutex mutex_;  // guards the fields below
  std::condition_variable cv_;
  int threads_ = 0;    // of its threads, those still running
  bool done_ = false;  // the bundle is in (sha256_, containerId_), or error_
  std::exception_ptr error_;
  std::string sha256_;
  std::string containerId_;

  // Written by the receive thread before done_; then the page thread's alone.
  std::shared_ptr<DataListener> pageListener_;  // until the relay has it
  std::optional<PageRelayHandle> relay_;
  UserfaultfdCopies uffdCopies_;  // restore() takes them first, then the page thread

  std::thread receiveThread_;
  std::thread pageThread_;
};

}  // namespace migrate
