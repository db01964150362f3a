#include "agent/receiver.h"

#include <signal.h>
#include <sys/socket.h>

#include "agent/container-cgroup.h"
#include "agent/criu-stats.h"
#include "agent/userfaultfd-copies.h"
#include "common/error.h"
#include "common/files.h"
#include "common/log.h"
#include "common/stream.h"
#include "net/data-listener.h"

namespace migrate {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace {

// How long the lazy-pages daemon may take to get ready for restore.
constexpr milliseconds kLazyPagesStartWait{10000};
constexpr milliseconds kRelayWatchEvery{200};
// After restore, how long the relay may take to hold its copy of the
// restored processes' userfaultfds.
constexpr milliseconds kUffdHoldWait{3000};

uint64_t nanosSince(Clock::time_point start) {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - start).count());
}

std::optional<IdMapping> manifestIdMapping(const nlohmann::json& manifest) {
  auto it = manifest.find("idMapping");
  if (it == manifest.end() || it->is_null()) return std::nullopt;
  return IdMapping::fromJson(*it, "bundle manifest: idMapping");
}

}  // namespace

Receiver::Receiver(Agent& agent, ReceiverSpec spec, ReportProgress report, OnEnd onEnd)
    : agent_(agent), spec_(std::move(spec)), report_(std::move(report)), onEnd_(std::move(onEnd)) {}

Receiver::~Receiver() {
  stop_ = true;
  // Each thread is written before the count that lets the owner destroy us
  // drops: no thread is started or assigned once we are here.
  if (receiveThread_.joinable()) receiveThread_.join();
  if (pageThread_.joinable()) pageThread_.join();
}

uint16_t Receiver::start(const std::string& dataAddress) {
  auto listener = std::make_shared<DataListener>(dataAddress);
  launch(receiveThread_, [this, listener]() mutable { receive(std::move(listener)); });
  return listener->port();
}

void Receiver::launch(std::thread& slot, std::function<void()> body) {
  {
    std::lock_guard lock(mutex_);
    if (stop_) fail(ErrorKind::Failed, "the receiver for migration " + spec_.migrationId + " is stopping");
    ++threads_;
  }
  try {
    slot = std::thread([this, body = std::move(body)] {
      try {
        body();
      } catch (const std::exception& e) {
        logError("migration " + spec_.migrationId + ": receiver thread: " + e.what());
      }
      std::lock_guard lock(mutex_);
      --threads_;
      cv_.notify_all();
    });
  } catch (...) {
    std::lock_guard lock(mutex_);
    --threads_;
    throw;
  }
}

bool Receiver::stop(milliseconds timeout) {
  stop_ = true;
  std::unique_lock lock(mutex_);
  return cv_.wait_for(lock, timeout, [&] { return threads_ == 0; });
}

bool Receiver::finished() {
  std::lock_guard lock(mutex_);
  return threads_ == 0;
}

void Receiver::end(const std::string& failure) {
  std::call_once(ended_, [&] { onEnd_(*this, failure); });
}

void Receiver::report(Phase phase, uint64_t done, const std::exception* failure) {
  report_(ProgressReport{spec_.migrationId, spec_.requestId, phase, done, 0, failure});
}

// Any failure, the deadline included, ends the receiver at once; the
// coordinator hears it at once too (the sender only sees a broken pipe).
void Receiver::receive(std::shared_ptr<DataListener> listener) {
  try {
    // Any host on the fabric can reach this port: the first connection that
    // proves the key is the sender, strangers are dropped (acceptTls).
    auto tls = listener->acceptTls(spec_.migrationId, spec_.psk, spec_.acceptTimeout, stop_);
    if (!spec_.postCopy) listener.reset();  // one stream only: later connections are refused
    Container imported;
    std::string sha = importBundle(tls, &imported);
    {
      std::lock_guard lock(mutex_);
      sha256_ = sha;
      containerId_ = imported.config.id;
      // Post-copy: the sender's next connections (the page channel, again
      // after a cut) go to the page relay, on the same port.
      if (spec_.postCopy) pageListener_ = std::move(listener);
    }
    // The lazy-pages daemon starts now rather than at restore: its start-up
    // is then not part of the downtime.
    if (spec_.postCopy) startPageThread();
  } catch (const std::exception& e) {
    if (!stop_) report(Phase::Receive, 0, &e);
    logWarn("migration " + spec_.migrationId + ": receive `" + spec_.containerName + "`: " + e.what());
    {
      std::lock_guard lock(mutex_);
      error_ = std::current_exception();
      done_ = true;
      cv_.notify_all();
    }
    end(e.what());
    return;
  }
  std::lock_guard lock(mutex_);
  done_ = true;
  cv_.notify_all();
}

// Imports the bundle as it arrives and acknowledges its last byte with the
// digest computed here; the sender compares it with its own before it
// reports success. Returns that digest.
std::string Receiver::importBundle(TlsStream& tls, Container* imported) {
  TlsInputStream in(tls);
  CountingInputStream counted(in);
  std::string sha;
  ImportRequest request;
  request.migrationId = spec_.migrationId;
  request.trust = spec_.trust;
  *imported = agent_.importCheckpoint(counted, request, [&](const nlohmann::json& manifest) {
    checkManifest(manifest);
    report(Phase::Receive, counted.count());
  }, &sha);
  tls.write(sha.data(), sha.size());
  tls.shutdownWrite();
  return sha;
}

// The bundle is the one the coordinator announced: same container, image
// and user namespace mapping as the source reported.
void Receiver::checkManifest(const nlohmann::json& manifest) {
  if (manifest.value("containerName", "") != spec_.containerName) {
    fail(ErrorKind::InvalidInput, "bundle is for `" + manifest.value("containerName", "") + "`, expected `" +
                                      spec_.containerName + "`");
  }
  if (!spec_.expectedImage.empty() && manifest.value("imageDigest", "") != spec_.expectedImage) {
    fail(ErrorKind::InvalidInput, "bundle's image " + manifest.value("imageDigest", "") + " is not " +
                                      spec_.expectedImage);
  }
  if (auto bundleMapping = manifestIdMapping(manifest); bundleMapping != spec_.idMapping) {
    fail(ErrorKind::InvalidInput, "bundle's user namespace mapping " + idMappingText(bundleMapping) + " is not " +
                                      idMappingText(spec_.idMapping) + ", the one the source reported");
  }
}

void Receiver::startPageThread() {
  if (!pageListener_) fail(ErrorKind::Failed, "no page channel listener for the relay");
  // The relay takes over the receiver's port (the source connects to it
  // again after a cut) and runs lazy-pages; it outlives this agent.
  PageRelaySpec spec = agent_.lazyPagesRelaySpec(containerId_);
  spec.migrationId = spec_.migrationId;
  spec.psk = spec_.psk;
  spec.listenAddress = pageListener_->address();
  spec.relayCgroup = agent_.relayCgroupPath(spec_.migrationId);
  relay_.emplace(PageRelayHandle::start(agent_.options().stateDir, spec, pageListener_->fd()));
  pageListener_.reset();
  bool ready = relay_->waitFor(kLazyPagesStartWait, [](const PageRelayStatus& s) { return s.lazyPagesReady; });
  if (!ready) {
    auto status = relay_->status();
    relay_->stop();
    fail("criu lazy-pages did not get ready within " + std::to_string(kLazyPagesStartWait.count() / 1000) + " s: " +
         status.error + " (" + (relay_->dir() / "lazy-pages.out").string() + ")");
  }
  launch(pageThread_, [this] { watchRelay(); });
}

void Receiver::watchRelay() {
  end(followTargetRelay(agent_, *relay_, containerId_, spec_.containerName, stop_, uffdCopies_));
}

// Until the relay has every page (or cannot go on). Stopping leaves the
// relay alone: it holds the container's memory, which only goes once the
// container is gone (abortReceive kills it first).
std::string followTargetRelay(Agent& agent, const PageRelayHandle& relay, const std::string& containerRef,
                              const std::string& name, const std::atomic<bool>& stop, UserfaultfdCopies& copies) {
  std::string cgroup = readRelaySpec(relay.dir()).cgroup;
  for (;;) {
    if (stop) return "stopped";
    auto s = relay.status();
    if (s.lazyPagesPid > 0 && s.state != RelayState::Done) copies.takeFrom(s.lazyPagesPid);
    if (s.state == RelayState::Failed && !relay.alive() && copies.size() > 0 && !s.containerFrozen) {
      bool frozen = freezeCgroup(cgroup);
      std::string failure = "page relay: " + s.error + (frozen ? "; the container is frozen" : "; freezing it failed");
      logError("post-copy of `" + name + "`: " + failure);
      // Let go of the copies only once nothing of it can run: a process
      // still running when the freeze was asked (not yet frozen) would fault
      // on a zero page the moment the last copy went. Until then, and until
      // the container is gone (abortReceive) or we stop, hold on.
      while (!stop && !cgroupMembers(cgroup).empty()) std::this_thread::sleep_for(kRelayWatchEvery);
      if (stop) {
        for (int i = 0; i < 50 && !cgroupFrozen(cgroup); ++i) std::this_thread::sleep_for(milliseconds(100));
      }
      return failure;
    }
    if (s.state == RelayState::Failed) {
      std::string failure = "page relay: " + s.error;
      logError("post-copy of `" + name + "`: " + failure);
      return failure;
    }
    if (s.state == RelayState::Done) {
      relay.reap();
      logInfo("post-copy of `" + name + "` complete: " + std::to_string(s.bytesPages >> 20) + " MiB of pages received");
      break;
    }
    std::this_thread::sleep_for(kRelayWatchEvery);
  }
  try {
    // The checkpoint was kept for lazy-pages until the last page.
    if (agent.findIfExists(containerRef)) agent.releaseCheckpoint(containerRef);
    relay.remove();
  } catch (const std::exception& e) {
    logWarn("post-copy of `" + name + "`: " + e.what());
  }
  return "";
}

void Receiver::waitForBundle(milliseconds timeout) {
  std::unique_lock lock(mutex_);
  if (!cv_.wait_for(lock, timeout, [&] { return done_; })) {
    fail(ErrorKind::Disconnected, "bundle for `" + spec_.containerName + "` still not received after " +
                                      std::to_string(timeout.count() / 1000) + " s");
  }
  if (error_) std::rethrow_exception(error_);
}

Restored Receiver::restore(const RestoreAsk& ask, milliseconds bundleWait) {
  waitForBundle(bundleWait);
  // Set before done_ and never changed after it.
  if (!ask.expectedSha256.empty() && ask.expectedSha256 != sha256_) {
    fail(ErrorKind::InvalidInput, "received bundle has SHA-256 " + sha256_ + ", the source sent " +
                                      ask.expectedSha256);
  }
  if (ask.postCopy && !relay_) fail(ErrorKind::InvalidInput, "this receiver was not prepared for post-copy");
  Restored out;
  out.sha256 = sha256_;
  auto start = Clock::now();
  RestoreRequest request{ask.tcpEstablished, false, false, false, ask.postCopy};
  try {
    out.container = agent_.restore(containerId_, request, &out.times);
  } catch (...) {
    // Post-copy: the container never ran; abortReceive stops the relay.
    if (ask.postCopy) stop_ = true;
    throw;
  }
  if (ask.postCopy) {
    writeFileAtomic(relay_->dir() / "restored", "", 0600);
    // From here on a page that did not come from the source must never be
    // read: the relay holds the userfaultfds too (page-relay.h).
    if (!relay_->waitFor(kUffdHoldWait, [](const PageRelayStatus& s) { return s.uffdsHeld > 0; })) {
      logWarn("post-copy of `" + spec_.containerName + "`: the relay holds no userfaultfd yet");
    }
    // ... and so does this agent, before the container is reported running.
    if (auto s = relay_->status(); s.lazyPagesPid > 0) uffdCopies_.takeFrom(s.lazyPagesPid);
  }
  if (auto criu = readCriuRestoreStats(out.container.paths.criuWork() / "stats-restore")) {
    for (auto [key, phase] : {std::pair{"forkingTime", "criu-forking"}, std::pair{"restoreTime", "criu-restore"}}) {
      if (criu->count(key)) out.times.add(phase, static_cast<double>(criu->at(key)) / 1e9);
    }
  }
  out.restoreNs = nanosSince(start);
  // Post-copy: the page thread lets go of the receiver after the last page.
  if (!ask.postCopy) end("");
  return out;
}

}  // namespace migrate
