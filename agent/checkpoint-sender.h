// Source side of a migration's checkpointAndSend, as named steps:
//   connect()        to the target's receiver, before anything is frozen
//   freeze()         CRIU dump (post-copy: a lazy dump, pages left behind)
//   stream()         the bundle, tar -> zstd -> TLS, progress as it goes
//   awaitDigest()    the target's SHA-256 of what it unpacked, against ours
//   openPageChannel() post-copy: the second connection, pumped to CRIU's
//                    page server by a PostCopySource
//
// Cancel (the coordinator's `cancel` of this request) is honoured in every
// step: before the freeze nothing happened; during the dump it takes effect
// as soon as CRIU returns (a dump killed midway could leave the container
// neither running nor checkpointed); during the stream within a fraction of
// a second (the TLS stream polls the flag). The error is Cancelled, and the
// coordinator's rollback brings the container back from its checkpoint.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "agent/agent.h"
#include "agent/criu-stats.h"
#include "agent/post-copy-source.h"
#include "agent/progress-report.h"
#include "net/tls-stream.h"

namespace migrate {

// What the coordinator's checkpointAndSend asked for.
struct SendSpec {
  std::string migrationId;
  uint64_t requestId = 0;
  std::string containerName;
  std::vector<uint8_t> psk;
  std::string targetAddress;
  uint16_t targetPort = 0;
  bool postCopy = false;
  bool tcpEstablished = false;
  bool leaveRunning = false;
  int zstdLevel = 3;
  int zstdThreads = 2;
};

struct SendStats {
  // CRIU's own account of the freeze (stats-dump); a lazy dump writes it
  // only at its end, so post-copy has none here.
  std::optional<CriuStats> criuDump;
  uint64_t connectNs = 0;
  uint64_t checkpointNs = 0;
  uint64_t streamNs = 0;
  ExportStats bundle;
};

class CheckpointSender {
 public:
  // `cancelled`: borrowed, must outlive the sender; set by another thread.
  CheckpointSender(Agent& agent, SendSpec spec, ReportProgress report, const std::atomic<bool>& cancelled);

  // All the steps. Post-copy: `postCopy` gets the running page transfer.
  // A failure before that leaves the container checkpointed (stop-and-copy)
  // or running again (post-copy: the lazy dump is aborted).
  SendStats run(std::shared_ptr<PostCopySource>* postCopy);

 private:
  TlsStream connect();
  void freeze();
  void stream(TlsStream& tls);
  void awaitDigest(TlsStream& tls);
  std::shared_ptr<PostCopySource> openPageChannel();
  void step(const char* name);  // enters a step: throws Cancelled if asked to stop
  void report(Phase phase, uint64_t done, uint64_t total);

  Agent& agent_;
  const SendSpec spec_;
  ReportProgress report_;
  const std::atomic<bool>& cancelled_;
  const char* step_ = "start";
  SendStats stats_;
  uint64_t total_ = 0;  // what the stream step expected to send
  // Post-copy, from the freeze: the lazy dump's owner. Dropped unstarted on
  // a failure, it aborts the dump and the container runs here again.
  std::shared_ptr<PostCopySource> postCopy_;
};

}  // namespace migrate
