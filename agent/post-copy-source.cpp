#include "agent/post-copy-source.h"

#include "common/error.h"
#include "common/log.h"
#include "net/data-listener.h"

namespace migrate {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace {

constexpr milliseconds kPageServerConnectTimeout{5000};

uint64_t nanosSince(Clock::time_point start) {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - start).count());
}

}  // namespace

PostCopySource::PostCopySource(Agent& agent, std::string migrationId, std::string containerName, LazyDump dump)
    : agent_(agent),
      migrationId_(std::move(migrationId)),
      containerName_(std::move(containerName)),
      dump_(std::move(dump)) {}

PostCopySource::~PostCopySource() { giveBack(); }

void PostCopySource::start(TlsStream pageChannel) {
  criuSocket_ = connectTcp("127.0.0.1", dump_.pageServerPort, kPageServerConnectTimeout);
  pageStream_.emplace(std::move(pageChannel));
  pumpStart_ = Clock::now();
  thread_ = std::thread([this] { pumpPages(); });
  started_ = true;
}

void PostCopySource::pumpPages() {
  std::exception_ptr pumpError;
  try {
    pumpTls(*pageStream_, criuSocket_.get(), stop_, &counters_);
    if (stop_) fail(ErrorKind::Failed, "page channel stopped");
  } catch (...) {
    pumpError = std::current_exception();
  }
  if (!pumpError) {
    // The target's lazy-pages daemon said goodbye: every page went. CRIU
    // finishes, and the frozen container here is gone.
    criuSocket_.reset();
    std::exception_ptr error;
    try {
      agent_.finishLazyCheckpoint(containerName_, dump_);
    } catch (...) {
      error = std::current_exception();
    }
    std::lock_guard lock(mutex_);
    pagesNs_ = nanosSince(pumpStart_);
    error_ = error;
    pagesDone_ = finished_ = true;
    cv_.notify_all();
    return;
  }
  // A cut channel: the target may already run the container, with part of
  // its memory. Stay frozen until the coordinator, having made the target
  // drop its copy, asks for this one back (giveBack).
  std::unique_lock lock(mutex_);
  pagesNs_ = nanosSince(pumpStart_);
  error_ = pumpError;
  pagesDone_ = true;
  cv_.notify_all();
  cv_.wait(lock, [&] { return resume_; });
  lock.unlock();
  pageStream_.reset();
  try {
    agent_.abortLazyCheckpoint(containerName_, dump_, std::move(criuSocket_));
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
    while (!cv_.wait_for(lock, milliseconds(200), [&] { return finished_ || (pagesDone_ && error_); })) {
      if (Clock::now() > deadline) {
        fail(ErrorKind::Disconnected, "pages still flowing after " + std::to_string(timeout.count() / 1000) + " s");
      }
      onProgress(counters_.toTls);
    }
    // A failure stays on record for giveBack, which resumes the container.
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
  return PagesStats{pagesNs_, counters_.toTls};
}

void PostCopySource::giveBack() {
  if (!started_) {
    // Never started: nothing of it runs anywhere else; CRIU resumes it here.
    std::call_once(joined_, [this] {
      try {
        // Our connection to the page server, if start() made it before
        // failing: CRIU's one-connection server reads no second one.
        agent_.abortLazyCheckpoint(containerName_, dump_, std::move(criuSocket_));
      } catch (const std::exception& e) {
        logError("post-copy of `" + containerName_ + "` abandoned before its pages went: " + e.what());
      }
    });
    return;
  }
  stop_ = true;
  {
    std::lock_guard lock(mutex_);
    resume_ = true;
    cv_.notify_all();
  }
  join();
}

void PostCopySource::finishForShutdown() {
  {
    std::unique_lock lock(mutex_);
    if (!pagesDone_) logInfo("stopping: waiting for the post-copy of `" + containerName_ + "` to send its last page");
    cv_.wait(lock, [&] { return pagesDone_; });
  }
  giveBack();
}

}  // namespace migrate
