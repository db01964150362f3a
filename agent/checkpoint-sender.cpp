#include "agent/checkpoint-sender.h"

#include "common/error.h"
#include "common/files.h"
#include "common/log.h"
#include "net/data-listener.h"

namespace migrate {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace {

constexpr milliseconds kConnectTimeout{10000};
constexpr milliseconds kProgressEvery{100};

uint64_t nanosSince(Clock::time_point start) {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - start).count());
}

}  // namespace

CheckpointSender::CheckpointSender(Agent& agent, SendSpec spec, ReportProgress report,
                                   const std::atomic<bool>& cancelled)
    : agent_(agent), spec_(std::move(spec)), report_(std::move(report)), cancelled_(cancelled) {}

SendStats CheckpointSender::run(std::shared_ptr<PostCopySource>* postCopy) {
  ErrorContext context("migration " + spec_.migrationId + ": checkpoint and send `" + spec_.containerName + "`");
  if (spec_.postCopy && spec_.leaveRunning) fail(ErrorKind::InvalidInput, "post-copy cannot leave the source running");
  try {
    step("connect");
    // Connect before freezing: an unreachable target must not cost downtime.
    auto start = Clock::now();
    TlsStream tls = connect();
    stats_.connectNs = nanosSince(start);

    step("checkpoint");
    start = Clock::now();
    freeze();
    stats_.checkpointNs = nanosSince(start);

    step("stream");
    start = Clock::now();
    stream(tls);
    awaitDigest(tls);
    stats_.streamNs = nanosSince(start);

    if (spec_.postCopy) {
      step("pages");
      *postCopy = openPageChannel();
    }
  } catch (...) {
    // The stream's own error (its TLS stream gave up on the flag, say) says
    // less than this: the operator asked.
    if (cancelled_) fail(ErrorKind::Cancelled, std::string("cancelled during the ") + step_ + " step");
    throw;
  }
  return stats_;
}

void CheckpointSender::step(const char* name) {
  step_ = name;
  if (cancelled_) fail(ErrorKind::Cancelled, std::string("cancelled before the ") + name + " step");
}

void CheckpointSender::report(Phase phase, uint64_t done, uint64_t total) {
  report_(ProgressReport{spec_.migrationId, spec_.requestId, phase, done, total, nullptr});
}

TlsStream CheckpointSender::connect() {
  Fd sock = connectTcp(spec_.targetAddress, spec_.targetPort, kConnectTimeout);
  TlsOptions options;
  options.stop = &cancelled_;  // a cancel ends a blocked write at once
  return TlsStream::connect(std::move(sock), spec_.migrationId, spec_.psk, options);
}

void CheckpointSender::freeze() {
  report(Phase::Checkpoint, 0, 0);
  PhaseTimes times;
  if (!spec_.postCopy) {
    agent_.checkpoint(spec_.containerName, CheckpointRequest{spec_.tcpEstablished, spec_.leaveRunning}, &times);
    return;
  }
  uint16_t port = pickLoopbackPort();
  postCopy_ = std::make_shared<PostCopySource>(
      agent_, spec_.migrationId, spec_.containerName,
      agent_.startLazyCheckpoint(spec_.containerName, CheckpointRequest{spec_.tcpEstablished, false}, port, &times));
}

void CheckpointSender::stream(TlsStream& tls) {
  auto container = agent_.inspect(spec_.containerName);
  uint64_t total = treeSize(container.paths.checkpoint()) + treeSize(container.paths.upper());
  TlsOutputStream out(tls);
  ExportOptions options;
  options.zstdLevel = spec_.zstdLevel;
  options.zstdThreads = spec_.zstdThreads;
  auto last = Clock::now();
  options.onProgress = [&](uint64_t bytesIn) {
    if (cancelled_) fail(ErrorKind::Cancelled, "cancelled during the stream step");
    if (Clock::now() - last < kProgressEvery) return;
    last = Clock::now();
    report(Phase::Stream, bytesIn, total);
  };
  stats_.bundle = agent_.exportCheckpoint(spec_.containerName, out, options);
  out.finish();
  total_ = total;
  if (!spec_.postCopy) stats_.criuDump = readCriuDumpStats(container.paths.criuWork() / "stats-dump");
}

// The receiver answers with the digest of what it unpacked: our proof that
// every byte arrived and went through its hostile-input checks.
void CheckpointSender::awaitDigest(TlsStream& tls) {
  std::string theirs(64, '\0');
  if (tls.readFully(theirs.data(), theirs.size()) < theirs.size()) {
    fail(ErrorKind::Disconnected, "target closed the stream without acknowledging it");
  }
  if (theirs != stats_.bundle.tarSha256) {
    fail(ErrorKind::Failed, "target read a bundle whose tar has SHA-256 " + theirs + ", sent " + stats_.bundle.tarSha256);
  }
  report(Phase::Stream, stats_.bundle.bytesRaw, total_);  // all of it, and acknowledged
}

// The page channel: a second connection to the same receiver, pumped to
// CRIU's page server until the target has every page.
std::shared_ptr<PostCopySource> CheckpointSender::openPageChannel() {
  postCopy_->start(spec_.targetAddress, spec_.targetPort, spec_.psk);
  return std::move(postCopy_);
}

}  // namespace migrate
