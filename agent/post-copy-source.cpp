#include "agent/post-copy-source.h"

#include <sys/socket.h>

#include <cstring>

#include "common/error.h"
#include "common/log.h"

namespace migrate {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace {

constexpr milliseconds kWatchEvery{100};

uint64_t nanosSince(Clock::time_point start) {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - start).count());
}

int64_t wallMs() {
  return std::chrono::duration_cast<milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

PostCopySource::PostCopySource(Agent& agent, std::string migrationId, std::string containerName, LazyDump dump)
    : agent_(agent),
      migrationId_(std::move(migrationId)),
      containerName_(std::move(containerName)),
      dump_(std::move(dump)) {}

PostCopySource::~PostCopySource() {
  bool left;
  {
    std::lock_guard lock(mutex_);
    left = left_;
  }
  if (!left) giveBack();
}

void PostCopySource::start(const std::string& targetAddress, uint16_t targetPort, const std::vector<uint8_t>& psk) {
  PageRelaySpec spec;
  spec.role = RelayRole::Source;
  spec.migrationId = migrationId_;
  spec.containerName = containerName_;
  spec.psk = psk;
  spec.targetAddress = targetAddress;
  spec.targetPort = targetPort;
  spec.criuPort = dump_.pageServerPort;
  spec.runcPid = dump_.runc.pid();
  spec.relayCgroup = agent_.relayCgroupPath(migrationId_);
  relay_.emplace(PageRelayHandle::start(agent_.options().stateDir, spec));
  start_ = Clock::now();
  thread_ = std::thread([this] { watch(); });
  started_ = true;
}

void PostCopySource::watch() {
  for (;;) {
    auto s = relay_->status();
    if (!criuCopy_ && s.localFd >= 0) {
      try {
        criuCopy_ = relay_->copyFd(s.localFd);
      } catch (const std::exception& e) {
        logWarn("post-copy of `" + containerName_ + "`: " + e.what());
      }
    }
    {
      std::lock_guard lock(mutex_);
      last_ = s;
      cv_.notify_all();
      if (left_ || resume_) break;
    }
    if (s.state == RelayState::Done) {
      // Every page went: CRIU finishes, and the frozen container here is gone.
      criuCopy_.reset();
      relay_->reap();
      std::exception_ptr error;
      try {
        // The relay's directory stays, saying `done`, until commitSource.
        agent_.finishLazyCheckpoint(containerName_, dump_);
      } catch (...) {
        error = std::current_exception();
      }
      std::lock_guard lock(mutex_);
      pagesNs_ = nanosSince(start_);
      error_ = error;
      finished_ = true;
      cv_.notify_all();
      return;
    }
    if (s.state == RelayState::Failed) {
      std::lock_guard lock(mutex_);
      pagesNs_ = nanosSince(start_);
      error_ = std::make_exception_ptr(Error(ErrorKind::Failed, s.error));
      cv_.notify_all();
      break;
    }
    std::this_thread::sleep_for(kWatchEvery);
  }
  // Failed, left, or asked for the container back: wait for which.
  std::unique_lock lock(mutex_);
  cv_.wait(lock, [&] { return resume_ || left_; });
  if (left_) return;
  lock.unlock();
  try {
    agent_.abortLazyCheckpoint(containerName_, dump_, Fd(), [&] {
      relay_->stop();
      // The relay gone before it could tell CRIU: our copy of its socket does.
      if (criuCopy_) {
        char garbage[64];
        std::memset(garbage, 0xff, sizeof garbage);
        (void)::send(criuCopy_.get(), garbage, sizeof garbage, MSG_NOSIGNAL);
        criuCopy_.reset();
      }
    });
    relay_->remove();
  } catch (const std::exception& e) {
    logError("post-copy of `" + containerName_ + "`: giving the container back failed: " + e.what());
  }
  lock.lock();
  finished_ = true;
  cv_.notify_all();
}

void PostCopySource::join() {
  std::call_once(joined_, [this] {
    if (thread_.joinable()) thread_.join();
  });
}

PagesStats PostCopySource::waitForPages(milliseconds timeout, const std::function<void(uint64_t sent)>& onProgress) {
  auto deadline = Clock::now() + timeout;
  {
    std::unique_lock lock(mutex_);
    for (;;) {
      if (cv_.wait_for(lock, milliseconds(200), [&] { return finished_ || error_ || left_; })) break;
      if (last_.state == RelayState::Cut && last_.cutSinceMs > 0 &&
          wallMs() - last_.cutSinceMs > kPageChannelCutBudget.count()) {
        // Reported, not given up: the relay keeps reconnecting.
        fail(ErrorKind::Failed, "page channel cut for " + std::to_string((wallMs() - last_.cutSinceMs) / 1000) +
                                    " s (" + last_.error + "); `" + containerName_ +
                                    "` stays frozen here while the relay reconnects");
      }
      if (Clock::now() > deadline) {
        fail(ErrorKind::Disconnected, "pages still flowing after " + std::to_string(timeout.count() / 1000) + " s");
      }
      uint64_t sent = last_.bytesPages;
      lock.unlock();
      onProgress(sent);
      lock.lock();
    }
    if (left_ && !finished_) {
      // The coordinator asks the next run of this agent, which adopts the relay.
      fail(ErrorKind::Disconnected, "the agent is stopping; the page relay of `" + containerName_ + "` goes on");
    }
    // Reported as `failed`, never `disconnected`: that kind is the
    // coordinator's cue that this agent is away and the question is to be
    // asked again.
    if (error_) {
      try {
        std::rethrow_exception(error_);
      } catch (const std::exception& e) {
        fail(ErrorKind::Failed, std::string("page transfer failed: ") + e.what());
      }
    }
  }
  join();
  return PagesStats{pagesNs_, last_.bytesPages, last_.reconnects};
}

void PostCopySource::giveBack() {
  if (!started_) {
    // Never started: nothing of it runs anywhere else; CRIU resumes it here.
    std::call_once(joined_, [this] {
      try {
        agent_.abortLazyCheckpoint(containerName_, dump_, Fd());
      } catch (const std::exception& e) {
        logError("post-copy of `" + containerName_ + "` abandoned before its pages went: " + e.what());
      }
    });
    return;
  }
  {
    std::lock_guard lock(mutex_);
    resume_ = true;  // nothing happens if every page went already
    cv_.notify_all();
  }
  join();
}

void PostCopySource::leave() {
  {
    std::lock_guard lock(mutex_);
    if (finished_) return;
    left_ = true;
    cv_.notify_all();
  }
  join();
  // CRIU serves on after us: its runc is not ours to kill any more.
  dump_.runc.detach();
  logInfo("stopping: the page relay for `" + containerName_ + "` goes on without this agent");
}

}  // namespace migrate
