#include "coordinator/migration.h"

#include <openssl/rand.h>

#include <cstdio>
#include <thread>
#include <ctime>

#include "agent/id-mapping-proto.h"
#include "common/log.h"
#include "common/timestamp.h"
#include "common/untrusted-json.h"

namespace migrate {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

// The target must keep this much memory free after taking the container; the
// container's own size is not reported by agents, so this is the floor.
constexpr uint64_t kMinFreeMemoryBytes = 64ull << 20;
constexpr uint64_t kMinFreeDiskBytes = 256ull << 20;

double msSince(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

kj::ArrayPtr<const kj::byte> bytesOf(const std::string& s) {
  return kj::arrayPtr(reinterpret_cast<const kj::byte*>(s.data()), s.size());
}

std::string isoTime(int64_t epochMs) {
  if (epochMs <= 0) return {};
  return formatUtc(WallClock::time_point(std::chrono::milliseconds(epochMs)), TimeFormat::Rfc3339Millis);
}

Phase phaseOfState(MigrationState state) {
  switch (state) {
    case MigrationState::Pending: return Phase::Pending;
    case MigrationState::Prechecking: return Phase::Precheck;
    case MigrationState::Preparing: return Phase::Prepare;
    case MigrationState::Checkpointing: return Phase::Checkpoint;
    case MigrationState::Restoring: return Phase::Restore;
    case MigrationState::Committed: return Phase::Commit;
    case MigrationState::RollingBack: return Phase::Rollback;
    default: return Phase::Done;
  }
}

// A cancel decides the outcome, whatever stopped the step: the kind says so.
// A cause of another kind (the request the cancel cut short failing its own
// way) stays in the message as the detail.
void markCancelled(std::string& error, ErrorKind& kind) {
  if (kind == ErrorKind::Cancelled) return;
  error = "cancelled: " + error;
  kind = ErrorKind::Cancelled;
}

}  // namespace

std::string randomBytes(size_t count) {
  std::string out(count, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(out.data()), static_cast<int>(count)) != 1) {
    fail("openssl: RAND_bytes failed");
  }
  return out;
}

std::string newMigrationId() {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string id = "m-";
  for (unsigned char b : randomBytes(8)) {
    id += kDigits[b >> 4];
    id += kDigits[b & 0xf];
  }
  return id;
}

json MigrationOptions::toJson() const {
  return {{"tcpEstablished", tcpEstablished}, {"leaveRunning", leaveRunning}, {"postCopy", postCopy}};
}

MigrationOptions MigrationOptions::fromJson(const json& j) {
  MigrationOptions o;
  o.tcpEstablished = jsonField(j, "tcpEstablished", o.tcpEstablished);
  o.leaveRunning = jsonField(j, "leaveRunning", o.leaveRunning);
  o.postCopy = jsonField(j, "postCopy", o.postCopy);
  return o;
}

RecoveryAction recoveryActionFor(const MigrationRecord& record, const std::optional<std::string>& owner) {
  if (isFinal(record.state)) return RecoveryAction::Nothing;
  // Past the commit point the container is the target's, whatever the state
  // column says: the owner and the state are written in one transaction, so
  // this only guards against a journal edited by hand.
  if (record.state == MigrationState::Committed || (owner && *owner == record.target)) {
    return RecoveryAction::FinishCommit;
  }
  switch (record.state) {
    case MigrationState::Pending:
    case MigrationState::Prechecking:
      // Prechecks only read, or copy an image the target may keep.
      return RecoveryAction::MarkFailed;
    default:
      return RecoveryAction::RollBack;
  }
}

json migrationToJson(const MigrationRecord& r, const std::optional<LiveProgress>& live) {
  json stats = r.stats.is_object() ? r.stats : json::object();
  json out = {
      {"id", r.id},
      {"container", r.container},
      {"source", r.source},
      {"target", r.target},
      {"state", stateName(r.state)},
      {"phase", phaseName(live ? live->phase : phaseOfState(r.state))},
      {"bytesDone", live ? live->bytesDone : 0},
      {"bytesTotal", live ? live->bytesTotal : 0},
      {"rateBytesPerSec", live ? live->rateBytesPerSec : 0.0},
      {"etaSeconds", live && live->etaSeconds ? json(*live->etaSeconds) : json(nullptr)},
      {"error", r.error.empty() ? json(nullptr) : json(r.error)},
      {"errorKind", r.errorKind.empty() ? json(nullptr) : json(r.errorKind)},
      {"options", r.options},
      {"stats", stats},
      {"createdAt", isoTime(r.createdAtMs)},
      {"finishedAt", isFinal(r.state) ? json(isoTime(r.updatedAtMs)) : json(nullptr)},
  };
  return out;
}

Migration::Migration(MigrationContext& context, MigrationRecord record)
    : ctx_(context), record_(std::move(record)), options_(MigrationOptions::fromJson(record_.options)) {
  if (!record_.stats.is_object()) record_.stats = json::object();
  live_.phase = phaseOfState(record_.state);
}

MigrationRecord Migration::record() const {
  std::lock_guard lock(mutex_);
  return record_;
}

// ---------------------------------------------------------------------------
// The migration

void Migration::run() {
  // No ErrorContext here: the journalled error is shown per migration anyway,
  // so it reads "host2: criu: ..." rather than repeating the migration.
  started_ = Clock::now();
  emit("migration.started");
  try {
    timed(Phase::Precheck, [&] { precheck(); });
    throwIfStopped();
    timed(Phase::Prepare, [&] { prepareTarget(); });
    throwIfStopped();
    checkpointAndStream();
    throwIfStopped();
    timed(Phase::Restore, [&] { restore(); });
    // Post-copy: the container runs on the target, its memory still coming
    // from the source. Not committed before the last page: if the channel
    // breaks, the source (still frozen) is the intact copy to roll back to.
    if (options_.postCopy) timed(Phase::Pages, [&] { awaitPages(); });
    // No cancellation past this point: the target runs the container, and
    // committing is the quickest way back to one copy.
    timed(Phase::Commit, [&] { commit(); });
  } catch (const std::exception& e) {
    if (abandoned_) {
      logInfo("migration " + record_.id + ": left at `" + std::string(stateName(record_.state)) +
              "` for the next coordinator start: " + e.what());
      return;
    }
    MigrationState reached = record().state;
    if (reached < MigrationState::Preparing) {
      // Nothing was touched on any host: fail, whatever the kind.
      MigrationState final = cancelled_ ? MigrationState::Cancelled : MigrationState::Failed;
      std::string error = e.what();
      ErrorKind kind = kindOf(e);
      if (cancelled_) markCancelled(error, kind);
      logWarn("migration " + record_.id + ": " + (cancelled_ ? "cancelled" : "failed") + " in precheck: " + error);
      try {
        ctx_.journal.setFailure(record_.id, final, error, kind);
        std::lock_guard lock(mutex_);
        record_.state = final;
        record_.error = error;
        record_.errorKind = std::string(kindName(kind));
      } catch (const std::exception& journalError) {
        logError("migration " + record_.id + ": journal: " + journalError.what());
      }
      setPhase(Phase::Done);
      emit("migration.failed");
    } else if (reached >= MigrationState::Committed) {
      // commit() handles its own failures; only the journal write itself can
      // land here, and then the next start decides from the journal.
      logError("migration " + record_.id + ": after commit: " + e.what());
    } else {
      rollback(e);
    }
    return;
  }
}

void Migration::precheck() {
  enter(MigrationState::Prechecking);
  setPhase(Phase::Precheck);
  if (record_.source == record_.target) {
    fail(ErrorKind::InvalidInput, "source and target are the same host `" + record_.target + "`");
  }
  source_ = ctx_.registry.get(record_.source);
  target_ = ctx_.registry.get(record_.target);
  if (!target_.up) fail(ErrorKind::Disconnected, "target host `" + record_.target + "` is not connected");
  if (!source_.up) fail(ErrorKind::Disconnected, "source host `" + record_.source + "` is not connected");
  if (target_.dataAddress.empty()) {
    fail(ErrorKind::Failed, "target host `" + record_.target + "` registered no data address");
  }
  // The target accepts only bundles signed by this key (prepareTarget).
  if (source_.signingKey.empty()) {
    fail(ErrorKind::Failed, "source host `" + record_.source + "` registered no bundle signing key");
  }
  checkContainerOnSource();
  auto targetContainers = listContainersOn(record_.target);
  checkNameFreeOnTarget(targetContainers);
  checkIdMappingFreeOnTarget(targetContainers);
  ensureImageOnTarget();
  checkCpuCompatible();
  checkCapacity();

  std::lock_guard lock(mutex_);
  record_.stats["versions"] = {
      {"source", {{"criu", source_.criuVersion}, {"runc", source_.runcVersion}, {"kernel", source_.kernelVersion}}},
      {"target", {{"criu", target_.criuVersion}, {"runc", target_.runcVersion}, {"kernel", target_.kernelVersion}}},
  };
  // The mapping the target was asked to give the container (null: the host's).
  record_.stats["idMapping"] = containerInfo_.idMapping ? containerInfo_.idMapping->toJson() : json();
  if (source_.criuVersion != target_.criuVersion || source_.runcVersion != target_.runcVersion) {
    logWarn("migration " + record_.id + ": CRIU/runc versions differ: source " + source_.criuVersion + "/" +
            source_.runcVersion + ", target " + target_.criuVersion + "/" + target_.runcVersion);
  }
}

// Asks `host` for its containers and records them, so the registry (and
// `migrate ps`) is current without waiting for the next heartbeat.
std::vector<ContainerSummary> Migration::listContainersOn(const std::string& host) {
  auto reply = request(host, "listContainers", ctx_.timeouts.request,
                       [](proto::Request::Builder r) { r.setListContainers(); });
  auto containers = containersFromProto(reply.get().getContainers());
  ctx_.registry.recordContainers(host, containers);
  return containers;
}

// After a commit or a rollback: best effort, heartbeats catch up otherwise.
void Migration::refreshHosts() {
  for (auto& host : {record_.source, record_.target}) {
    try {
      listContainersOn(host);
    } catch (const std::exception& e) {
      logDebug("migration " + record_.id + ": refreshing " + host + ": " + e.what());
    }
  }
}

void Migration::checkContainerOnSource() {
  auto containers = listContainersOn(record_.source);
  for (auto& c : containers) {
    if (c.name != record_.container) continue;
    if (c.state != "running") {
      fail(ErrorKind::Conflict, "container `" + c.name + "` on " + record_.source + " is " + c.state + ", not running");
    }
    containerInfo_ = c;
    return;
  }
  fail(ErrorKind::NotFound, "container `" + record_.container + "` not found on " + record_.source);
}

void Migration::checkNameFreeOnTarget(const std::vector<ContainerSummary>& targetContainers) {
  for (auto& c : targetContainers) {
    if (c.name == record_.container) {
      fail(ErrorKind::Conflict, "a container named `" + c.name + "` already exists on " + record_.target + " (" +
                                    c.state + ")");
    }
    if (!containerInfo_.ip.empty() && c.ip == containerInfo_.ip) {
      fail(ErrorKind::Conflict, "address " + c.ip + " of `" + record_.container + "` is taken on " + record_.target +
                                    " by `" + c.name + "`");
    }
  }
}

// The target checks this too (prepareReceive), against its range as well,
// which only it knows; refused here, before the target prepares anything.
void Migration::checkIdMappingFreeOnTarget(const std::vector<ContainerSummary>& targetContainers) {
  if (!containerInfo_.idMapping) return;
  const IdMapping& mapping = *containerInfo_.idMapping;
  for (auto& c : targetContainers) {
    if (!c.idMapping || !c.idMapping->overlaps(mapping)) continue;
    refuseOverlap(mapping, record_.container, *c.idMapping, c.name, " on " + record_.target);
  }
}

void Migration::ensureImageOnTarget() {
  const std::string& digest = containerInfo_.imageDigest;
  if (digest.empty()) {
    logWarn("migration " + record_.id + ": source reports no image digest for `" + record_.container +
            "`; skipping the image check");
    return;
  }
  auto reply = request(record_.target, "listImages", ctx_.timeouts.request,
                       [](proto::Request::Builder r) { r.setListImages(); });
  for (auto image : reply.get().getImages()) {
    if (std::string(image.getDigest().cStr()) == digest) return;
  }

  uint64_t size = 0;
  for (auto& image : source_.images) {
    if (image.digest == digest) size = image.sizeBytes;
  }
  if (target_.diskAvailableBytes && target_.diskAvailableBytes < 2 * size + kMinFreeDiskBytes) {
    fail(ErrorKind::Overloaded, "target " + record_.target + " has " + std::to_string(target_.diskAvailableBytes >> 20) +
                                    " MiB free, too little for image " + digest);
  }
  logInfo("migration " + record_.id + ": image " + digest + " missing on " + record_.target + "; sending it from " +
          record_.source);
  setPhase(Phase::Image);
  std::string psk = randomBytes(32);
  std::string identity = "image-" + record_.id;
  auto port = request(record_.target, "receiveImage", ctx_.timeouts.request, [&](proto::Request::Builder r) {
                auto receive = r.initReceiveImage();
                receive.setDigest(digest);
                receive.setPsk(bytesOf(psk));
                receive.setPskIdentity(identity);
              }).get();
  if (!port.isPort()) fail("target " + record_.target + " answered receiveImage without a port");
  uint16_t imagePort = port.getPort();
  request(record_.source, "sendImage", ctx_.timeouts.sendImage, [&](proto::Request::Builder r) {
    auto send = r.initSendImage();
    send.setImage(digest);
    send.setTargetAddress(target_.dataAddress);
    send.setTargetPort(imagePort);
    send.setPsk(bytesOf(psk));
    send.setPskIdentity(identity);
  });
  std::lock_guard lock(mutex_);
  record_.stats["imageSent"] = true;
}

void Migration::checkCpuCompatible() {
  if (source_.cpuInfo.empty()) {
    logWarn("migration " + record_.id + ": " + record_.source + " registered no CRIU cpuinfo; CPU check skipped");
    return;
  }
  // The target's `criu cpuinfo check` answers Conflict with CRIU's reason.
  request(record_.target, "checkCpuInfo", ctx_.timeouts.request,
          [&](proto::Request::Builder r) { r.initCheckCpuInfo().setCpuInfo(bytesOf(source_.cpuInfo)); });
}

void Migration::checkCapacity() {
  auto target = ctx_.registry.get(record_.target);  // Load from the latest heartbeat.
  if (target.memAvailableBytes && target.memAvailableBytes < kMinFreeMemoryBytes) {
    fail(ErrorKind::Overloaded, "target " + record_.target + " has only " +
                                    std::to_string(target.memAvailableBytes >> 20) + " MiB of memory available");
  }
  if (target.diskAvailableBytes && target.diskAvailableBytes < kMinFreeDiskBytes) {
    fail(ErrorKind::Overloaded, "target " + record_.target + " has only " +
                                    std::to_string(target.diskAvailableBytes >> 20) + " MiB of disk available");
  }
}

void Migration::prepareTarget() {
  psk_ = randomBytes(32);
  enter(MigrationState::Preparing);
  setPhase(Phase::Prepare);
  auto reply = request(record_.target, "prepareReceive", ctx_.timeouts.request, [&](proto::Request::Builder r) {
    auto prepare = r.initPrepareReceive();
    prepare.setMigrationId(record_.id);
    prepare.setContainerName(record_.container);
    prepare.setPsk(bytesOf(psk_));
    prepare.setPostCopy(options_.postCopy);
    prepare.setSourceSigningKey(bytesOf(source_.signingKey));
    auto expected = prepare.initExpectedManifest();
    expected.setContainerName(record_.container);
    expected.setImageDigest(containerInfo_.imageDigest);
    expected.setSourceHost(record_.source);
    expected.setCriuVersion(source_.criuVersion);
    expected.setRuncVersion(source_.runcVersion);
    expected.setIp(containerInfo_.ip);
    expected.setMac(containerInfo_.mac);
    if (containerInfo_.idMapping) fillIdMapping(expected.initIdMapping(), *containerInfo_.idMapping);
  });
  if (!reply.get().isPort() || reply.get().getPort() == 0) {
    fail("target " + record_.target + " answered prepareReceive without a port");
  }
  port_ = reply.get().getPort();
}

void Migration::checkpointAndStream() {
  enter(MigrationState::Checkpointing);
  setPhase(Phase::Checkpoint);
  auto start = Clock::now();
  // Downtime runs from here (the source freezes the container) to the
  // target's restore reply (it runs again).
  freezeStarted_ = start;
  auto reply = request(record_.source, "checkpointAndSend", ctx_.timeouts.checkpointAndSend,
                       [&](proto::Request::Builder r) {
                         auto send = r.initCheckpointAndSend();
                         send.setMigrationId(record_.id);
                         send.setContainerName(record_.container);
                         send.setTargetAddress(target_.dataAddress);
                         send.setTargetPort(port_);
                         send.setPsk(bytesOf(psk_));
                         send.setTcpEstablished(options_.tcpEstablished);
                         send.setLeaveRunning(options_.leaveRunning);
                         send.setPostCopy(options_.postCopy);
                       });
  double wallMs = msSince(start);
  if (!reply.get().isStats()) fail("source " + record_.source + " answered checkpointAndSend without stats");
  auto s = reply.get().getStats();
  double checkpointMs = s.getCheckpointNs() ? s.getCheckpointNs() / 1e6 : wallMs;
  if (checkpointMs > wallMs) checkpointMs = wallMs;
  sourceSha256_ = s.getSha256().cStr();

  std::lock_guard lock(mutex_);
  json& stats = record_.stats;
  stats["phases"][phaseName(Phase::Checkpoint)] = checkpointMs;
  stats["phases"][phaseName(Phase::Stream)] = wallMs - checkpointMs;
  stats["bytesRaw"] = s.getBytesRaw();
  stats["bytesWire"] = s.getBytesWire();
  stats["compressionRatio"] = s.getBytesWire() ? double(s.getBytesRaw()) / double(s.getBytesWire()) : 0.0;
  stats["sha256"] = sourceSha256_;
  stats["criu"] = {{"freezingMs", s.getFreezingNs() / 1e6}, {"frozenMs", s.getFrozenNs() / 1e6},
                   {"memdumpMs", s.getMemdumpNs() / 1e6},   {"memwriteMs", s.getMemwriteNs() / 1e6},
                   {"pagesScanned", s.getPagesScanned()},   {"pagesWritten", s.getPagesWritten()}};
  json sourcePhases = json::object();
  for (auto p : s.getPhases()) sourcePhases[p.getPhase().cStr()] = p.getNanos() / 1e6;
  stats["agentPhases"]["source"] = sourcePhases;
  ctx_.journal.setStats(record_.id, stats);
}

void Migration::restore() {
  enter(MigrationState::Restoring);
  setPhase(Phase::Restore);
  auto reply = request(record_.target, "restore", ctx_.timeouts.restore, [&](proto::Request::Builder r) {
    auto restore = r.initRestore();
    restore.setMigrationId(record_.id);
    restore.setContainerName(record_.container);
    // The target refuses to restore a bundle whose received digest differs.
    restore.setExpectedSha256(sourceSha256_);
    restore.setTcpEstablished(options_.tcpEstablished);
    restore.setPostCopy(options_.postCopy);
  });
  double downtimeMs = msSince(freezeStarted_);
  std::string targetSha;
  json targetPhases = json::object();
  if (reply.get().isRestored()) {
    auto stats = reply.get().getRestored().getStats();
    targetSha = stats.getSha256().cStr();
    for (auto p : stats.getPhases()) targetPhases[p.getPhase().cStr()] = p.getNanos() / 1e6;
  }
  {
    std::lock_guard lock(mutex_);
    record_.stats["downtimeMs"] = downtimeMs;
    record_.stats["sha256Target"] = targetSha;
    record_.stats["agentPhases"]["target"] = targetPhases;
  }
  // The target already refused a mismatch before restoring (expectedSha256);
  // this is the same check on the coordinator's side, for an older agent.
  if (!sourceSha256_.empty() && !targetSha.empty() && sourceSha256_ != targetSha) {
    fail(ErrorKind::InvalidInput, "bundle digest mismatch: source sent sha256 " + sourceSha256_ + ", target got " +
                                      targetSha);
  }
}

void Migration::awaitPages() {
  setPhase(Phase::Pages);
  // The source agent being away (restarting) is no reason to give up: the
  // container runs on the target and the source's CRIU keeps serving. Ask
  // again until it answers; it reports a broken transfer as `failed`.
  auto deadline = Clock::now() + ctx_.timeouts.finishPostCopy;
  std::optional<ReplyMessage> answer;
  while (!answer) {
    try {
      answer = request(record_.source, "finishPostCopy", ctx_.timeouts.finishPostCopy, [&](proto::Request::Builder r) {
        auto finish = r.initFinishPostCopy();
        finish.setMigrationId(record_.id);
        finish.setContainerName(record_.container);
      });
    } catch (const Error& e) {
      if (e.kind() != ErrorKind::Disconnected || Clock::now() > deadline || abandoned_) throw;
      logWarn("migration " + record_.id + ": " + record_.source + " away while its pages go (" + e.what() +
              "); asking again");
      std::this_thread::sleep_for(std::chrono::seconds(1));
    }
  }
  auto& reply = *answer;
  if (!reply.get().isStats()) return;
  auto s = reply.get().getStats();
  std::lock_guard lock(mutex_);
  record_.stats["pagesMs"] = s.getPagesNs() / 1e6;
  record_.stats["bytesPages"] = s.getBytesPages();
  record_.stats["pageChannelReconnects"] = s.getPageChannelReconnects();
  ctx_.journal.setStats(record_.id, record_.stats);
}

void Migration::commit() {
  setPhase(Phase::Commit);
  // The commit point: from this write on, the container belongs to the target.
  ctx_.journal.recordCommit(record_.id, record_.container, record_.target);
  {
    std::lock_guard lock(mutex_);
    record_.state = MigrationState::Committed;
    record_.stats["totalMs"] = msSince(started_);
  }
  saveStats();
  emit("migration.succeeded");
  finishCommit();
}

void Migration::finishCommit() {
  if (options_.leaveRunning) {
    // A copy by request: the source keeps its running container and nothing
    // there is ours to delete.
    logInfo("migration " + record_.id + ": leave-running copy; source " + record_.source + " keeps `" +
            record_.container + "`");
  } else {
    try {
      request(record_.source, "commitSource", ctx_.timeouts.commitSource, [&](proto::Request::Builder r) {
        auto commit = r.initCommitSource();
        commit.setMigrationId(record_.id);
        commit.setContainerName(record_.container);
      });
    } catch (const std::exception& e) {
      if (abandoned_) return;
      // Never rolled back: the target runs the container now. The source's
      // leftover copy is deleted when a retry gets through.
      logWarn("migration " + record_.id + ": commitSource on " + record_.source + " failed (will retry): " + e.what());
      ctx_.journal.setFailure(record_.id, MigrationState::Committed,
                              std::string("cleanup of the source pending (will retry): ") + e.what(), kindOf(e));
      std::lock_guard lock(mutex_);
      record_.error = std::string("cleanup of the source pending (will retry): ") + e.what();
      record_.errorKind = std::string(kindName(kindOf(e)));
      return;
    }
  }
  refreshHosts();  // before `succeeded` is visible, so `migrate ps` then shows the new place
  ctx_.journal.setFailure(record_.id, MigrationState::Succeeded, "", ErrorKind::Failed);
  {
    std::lock_guard lock(mutex_);
    record_.state = MigrationState::Succeeded;
    record_.error.clear();
    record_.errorKind.clear();
  }
  setPhase(Phase::Done);
  logInfo("migration " + record_.id + ": `" + record_.container + "` now runs on " + record_.target);
}

void Migration::rollback(const std::exception& cause) {
  MigrationState reached = record().state;
  std::string error = cause.what();
  ErrorKind kind = kindOf(cause);
  if (kind == ErrorKind::Disconnected) {
    // A stream cut by the other side: its own report of why is the root
    // cause, and it may arrive just after the sender's error. Wait a moment.
    for (int i = 0; i < 20; ++i) {
      {
        std::lock_guard lock(mutex_);
        if (!peerError_.empty()) break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  {
    std::lock_guard lock(mutex_);
    if (!peerError_.empty() && kind == ErrorKind::Disconnected) {
      error = peerError_ + " (then: " + error + ")";
      kind = peerErrorKind_;
    }
  }
  if (cancelled_) markCancelled(error, kind);
  logWarn("migration " + record_.id + ": rolling back from `" + std::string(stateName(reached)) + "`: " + error);
  {
    std::lock_guard lock(mutex_);
    record_.stats["rollbackFrom"] = std::string(stateName(reached));
    // The journalled error grows a "waits for ..." tail while a host is
    // away; each retry (recover()) starts again from this.
    record_.stats["rollbackCause"] = error;
    record_.stats["totalMs"] = msSince(started_);
  }
  saveStats();
  ctx_.journal.setFailure(record_.id, MigrationState::RollingBack, error, kind);
  {
    std::lock_guard lock(mutex_);
    record_.state = MigrationState::RollingBack;
    record_.error = error;
    record_.errorKind = std::string(kindName(kind));
  }
  setPhase(Phase::Rollback);
  undoOnHosts(reached >= MigrationState::Restoring, error, kind);
}

bool Migration::undoOnHosts(bool targetMayRun, const std::string& error, ErrorKind kind) {
  undoing_ = true;
  bool targetCleanupPending = false;
  try {
    request(record_.target, "abortReceive", ctx_.timeouts.request,
            [&](proto::Request::Builder r) { r.initAbortReceive().setMigrationId(record_.id); });
  } catch (const Error& e) {
    bool nothingThere = e.kind() == ErrorKind::NotFound;
    if (!nothingThere && targetMayRun) {
      // The target may be running the container: restoring the source now
      // could leave two copies running. Wait for the target.
      std::string waiting = error + "; rollback waits for " + record_.target + " to confirm abortReceive (" +
                            e.what() + ")";
      logError("migration " + record_.id + ": " + waiting);
      ctx_.journal.setFailure(record_.id, MigrationState::RollingBack, waiting, kind);
      return false;
    }
    if (!nothingThere) {
      // The target cannot run it (no restore was sent), so the source may
      // run it again now; but what the target received must still go, so
      // the migration stays `rolling-back` and the retry sends abortReceive
      // again once the target is back.
      logWarn("migration " + record_.id + ": abortReceive on " + record_.target + " failed (will retry): " + e.what());
      targetCleanupPending = true;
    }
  }
  try {
    request(record_.source, "rollbackSource", ctx_.timeouts.rollbackSource, [&](proto::Request::Builder r) {
      auto rollback = r.initRollbackSource();
      rollback.setMigrationId(record_.id);
      rollback.setContainerName(record_.container);
    });
  } catch (const std::exception& e) {
    std::string waiting = error + "; rollbackSource on " + record_.source + " failed (will retry): " + e.what();
    logError("migration " + record_.id + ": " + waiting);
    ctx_.journal.setFailure(record_.id, MigrationState::RollingBack, waiting, kind);
    return false;
  }
  if (targetCleanupPending) {
    refreshHosts();  // the source runs it again: show that now
    std::string waiting = error + "; `" + record_.container + "` runs on " + record_.source + " again; cleanup on " +
                          record_.target + " pending (will retry)";
    {
      std::lock_guard lock(mutex_);
      record_.error = waiting;
      record_.stats["targetCleanupPending"] = true;  // the CLI stops waiting on this
    }
    saveStats();
    ctx_.journal.setFailure(record_.id, MigrationState::RollingBack, waiting, kind);
    return false;
  }
  {
    std::lock_guard lock(mutex_);
    record_.stats.erase("targetCleanupPending");
  }
  saveStats();
  refreshHosts();  // before `rolled-back` is visible
  ctx_.journal.setFailure(record_.id, MigrationState::RolledBack, error, kind);
  {
    std::lock_guard lock(mutex_);
    record_.state = MigrationState::RolledBack;
    record_.error = error;
    record_.errorKind = std::string(kindName(kind));
  }
  setPhase(Phase::Done);
  logInfo("migration " + record_.id + ": rolled back; `" + record_.container + "` runs on " + record_.source);
  emit("migration.failed");
  return true;
}

void Migration::recover() {
  try {
    auto owner = ctx_.journal.ownerIfExists(record_.container);
    switch (recoveryActionFor(record_, owner)) {
      case RecoveryAction::Nothing:
        return;
      case RecoveryAction::MarkFailed: {
        std::string error = "coordinator restarted before the migration touched any host";
        ctx_.journal.setFailure(record_.id, MigrationState::Failed, error, ErrorKind::Disconnected);
        std::lock_guard lock(mutex_);
        record_.state = MigrationState::Failed;
        record_.error = error;
        record_.errorKind = std::string(kindName(ErrorKind::Disconnected));
        break;
      }
      case RecoveryAction::FinishCommit:
        if (record_.state != MigrationState::Committed) {
          ctx_.journal.recordCommit(record_.id, record_.container, record_.target);
          std::lock_guard lock(mutex_);
          record_.state = MigrationState::Committed;
        }
        setPhase(Phase::Commit);
        finishCommit();
        break;
      case RecoveryAction::RollBack: {
        MigrationState from = record_.state;
        if (from == MigrationState::RollingBack) {
          from = stateFromName(record_.stats.value("rollbackFrom", std::string("restoring")));
        } else {
          std::lock_guard lock(mutex_);
          record_.stats["rollbackFrom"] = std::string(stateName(from));
          record_.error = "coordinator restarted during `" + std::string(stateName(from)) + "`";
          record_.errorKind = std::string(kindName(ErrorKind::Disconnected));
          record_.stats["rollbackCause"] = record_.error;
        }
        saveStats();
        // The cause as rollback() journalled it, without the tail an earlier
        // attempt added ("; rollback waits for ..."): this attempt says its own.
        // A journal from before rollbackCause existed has only the error column.
        std::string error = record_.error.empty() ? "rolled back after a coordinator restart" : record_.error;
        if (auto cause = record_.stats.find("rollbackCause"); cause != record_.stats.end() && cause->is_string()) {
          error = cause->get<std::string>();
        }
        ErrorKind kind = record_.errorKind.empty() ? ErrorKind::Disconnected : kindFromName(record_.errorKind);
        if (record_.state != MigrationState::RollingBack) {
          ctx_.journal.setFailure(record_.id, MigrationState::RollingBack, error, kind);
          std::lock_guard lock(mutex_);
          record_.state = MigrationState::RollingBack;
        }
        setPhase(Phase::Rollback);
        undoOnHosts(from >= MigrationState::Restoring, error, kind);
        break;
      }
    }
  } catch (const std::exception& e) {
    logError(std::string("migration ") + record_.id + ": recovery: " + e.what());
  }
}

bool Migration::cancel() {
  std::optional<std::pair<std::string, uint64_t>> current;
  {
    std::lock_guard lock(mutex_);
    if (record_.state >= MigrationState::Restoring) return false;
    cancelled_ = true;
    current = current_;
  }
  if (current) ctx_.link.cancel(current->first, current->second);
  return true;
}

void Migration::abandon() { abandoned_ = true; }

// ---------------------------------------------------------------------------
// Helpers

void Migration::enter(MigrationState state) {
  // Journalled first: a crash right after this line must find the state that
  // says what may have been sent.
  ctx_.journal.setState(record_.id, state);
  std::lock_guard lock(mutex_);
  record_.state = state;
}

void Migration::throwIfStopped() {
  if (abandoned_) fail(ErrorKind::Disconnected, "coordinator is shutting down");
  // A cancel stops the way forward, never the way back.
  if (cancelled_ && !undoing_) fail(ErrorKind::Cancelled, "cancelled by request");
}

ReplyMessage Migration::request(const std::string& host, const std::string& what, std::chrono::milliseconds timeout,
                                const AgentLink::RequestFiller& fill) {
  throwIfStopped();
  uint64_t requestId = ctx_.link.newRequestId();
  {
    std::lock_guard lock(mutex_);
    current_ = std::make_pair(host, requestId);
  }
  struct ClearCurrent {
    Migration& self;
    ~ClearCurrent() {
      std::lock_guard lock(self.mutex_);
      self.current_.reset();
    }
  } clear{*this};
  return ctx_.link.call(CallSpec{host, what, record_.id, timeout, requestId}, fill);
}

template <typename Step>
void Migration::timed(Phase phase, Step step) {
  auto start = Clock::now();
  step();
  {
    std::lock_guard lock(mutex_);
    record_.stats["phases"][phaseName(phase)] = msSince(start);
  }
  saveStats();
}

void Migration::saveStats() {
  json stats;
  {
    std::lock_guard lock(mutex_);
    stats = record_.stats;
  }
  ctx_.journal.setStats(record_.id, stats);
}

void Migration::setPhase(Phase phase) {
  std::lock_guard lock(mutex_);
  live_ = LiveProgress{};
  live_.phase = phase;
  rateSince_ = Clock::now();
  rateSinceBytes_ = 0;
}

void Migration::onProgress(const ProgressUpdate& update) {
  std::lock_guard lock(mutex_);
  if (!update.error.empty()) {
    peerError_ = update.host + ": " + update.error;
    peerErrorKind_ = update.errorKind;
    return;
  }
  if (!update.phase) return;  // a newer agent's phase: nothing this build can show
  auto now = Clock::now();
  if (*update.phase != live_.phase) {
    live_ = LiveProgress{};
    live_.phase = *update.phase;
    rateSince_ = now;
    rateSinceBytes_ = update.bytesDone;
  }
  live_.bytesDone = update.bytesDone;
  live_.bytesTotal = update.bytesTotal;
  double seconds = std::chrono::duration<double>(now - rateSince_).count();
  if (seconds > 0.2 && update.bytesDone >= rateSinceBytes_) {
    live_.rateBytesPerSec = double(update.bytesDone - rateSinceBytes_) / seconds;
  }
  live_.etaSeconds.reset();
  if (live_.bytesTotal > live_.bytesDone && live_.rateBytesPerSec > 0) {
    live_.etaSeconds = double(live_.bytesTotal - live_.bytesDone) / live_.rateBytesPerSec;
  }
}

LiveProgress Migration::progress() const {
  std::lock_guard lock(mutex_);
  return live_;
}

void Migration::emit(const char* event) {
  if (!ctx_.onEvent) return;
  try {
    ctx_.onEvent(event, record());
  } catch (const std::exception& e) {
    logWarn(std::string("migration ") + record_.id + ": event " + event + ": " + e.what());
  }
}

}  // namespace migrate
