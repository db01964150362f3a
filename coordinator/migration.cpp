#include "coordinator/migration.h"

#include <openssl/rand.h>

#include <cstdio>
#include <thread>
#include <ctime>

#include "agent/id-mapping-proto.h"
#include "common/duration.h"
#include "common/log.h"
#include "common/timestamp.h"
#include "common/untrusted-json.h"
#include "coordinator/downtime-estimate.h"

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
    case MigrationState::Paused: return Phase::Pages;  // the pages phase, stopped
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
  json j = {{"tcpEstablished", tcpEstablished}, {"leaveRunning", leaveRunning}, {"postCopy", postCopy}};
  if (maxDowntimeMs) j["maxDowntimeMs"] = maxDowntimeMs;
  return j;
}

MigrationOptions MigrationOptions::fromJson(const json& j) {
  MigrationOptions o;
  o.tcpEstablished = jsonField(j, "tcpEstablished", o.tcpEstablished);
  o.leaveRunning = jsonField(j, "leaveRunning", o.leaveRunning);
  o.postCopy = jsonField(j, "postCopy", o.postCopy);
  if (auto budget = j.find("maxDowntimeMs"); budget != j.end() && !budget->is_null()) {
    // A whole number of milliseconds, as the CLI sends (common/duration.h).
    bool whole = budget->is_number_unsigned() || (budget->is_number_integer() && budget->get<int64_t>() >= 0);
    if (!whole || budget->get<uint64_t>() < 1 || budget->get<uint64_t>() > kMaxDurationMs) {
      fail(ErrorKind::InvalidInput, "maxDowntimeMs: give whole milliseconds from 1 to " +
                                        std::to_string(kMaxDurationMs) + ", not " + budget->dump());
    }
    o.maxDowntimeMs = budget->get<uint64_t>();
  }
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
  // Past switchover the target has run the container and acknowledged
  // writes: rolling back would lose them. (A `rolling-back` one with
  // stats.kept is an operator's abandon, which is allowed to.)
  bool postCopy = MigrationOptions::fromJson(record.options).postCopy;
  bool switchedOver = record.stats.is_object() && record.stats.contains("switchoverAtMs");
  switch (record.state) {
    case MigrationState::Pending:
    case MigrationState::Prechecking:
      // Prechecks only read, or copy an image the target may keep.
      return RecoveryAction::MarkFailed;
    case MigrationState::Paused:
      return RecoveryAction::ResumePaused;
    case MigrationState::Restoring:
      if (switchedOver) return RecoveryAction::AwaitPages;
      // The restore may have replied just before the crash, unjournalled.
      if (postCopy) return RecoveryAction::AskTarget;
      return RecoveryAction::RollBack;
    default:
      return RecoveryAction::RollBack;
  }
}

json migrationToJson(const MigrationRecord& r, const std::optional<LiveProgress>& live) {
  json stats = r.stats.is_object() ? r.stats : json::object();
  // Whether the budget held, once the downtime is known.
  if (auto budget = stats.find("downtimeBudget"); budget != stats.end() && budget->is_object() &&
                                                  stats.contains("downtimeMs")) {
    (*budget)["met"] = stats.value("downtimeMs", 0.0) <= budget->value("budgetMs", 0.0);
  }
  // The journal keeps epoch milliseconds; readers get the time as well.
  for (auto [ms, at] : {std::pair{"switchoverAtMs", "switchoverAt"}, std::pair{"pausedAtMs", "pausedAt"}}) {
    if (auto it = stats.find(ms); it != stats.end() && it->is_number_integer()) stats[at] = isoTime(it->get<int64_t>());
  }
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
  switchedOver_ = record_.stats.contains("switchoverAtMs");
  // A recovered migration's total time counts from its creation.
  if (record_.createdAtMs > 0) started_ = Clock::now() - std::chrono::milliseconds(nowEpochMs() - record_.createdAtMs);
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
    if (options_.postCopy) {
      // Switchover: the container runs on the target, its memory still
      // coming from the source. Not committed before the last page, and
      // never rolled back from here on either: the target has answered
      // requests and written, which resuming the source would lose.
      recordSwitchover();
      followPages(false);
    } else {
      // No cancellation past this point: the target runs the container, and
      // committing is the quickest way back to one copy.
      timed(Phase::Commit, [&] { commit(); });
    }
  } catch (const std::exception& e) {
    if (leaving_) {
      logInfo("migration " + record_.id + ": left at `" + std::string(stateName(record_.state)) +
              "` for the next coordinator start: " + e.what());
      return;
    }
    if (switchedOver_) {
      // followPages() pauses on every agent's failure; only the journal
      // itself failing lands here. The next start resumes from the journal.
      logError("migration " + record_.id + ": after switchover, left for the next coordinator start: " + e.what());
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
        journalOutcome(final, error, kind);
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
  if (options_.maxDowntimeMs) applyDowntimeBudget();

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

// The budget's choice is made once, here, and journalled with the options:
// a coordinator started again goes on in the mode chosen.
void Migration::applyDowntimeBudget() {
  json budget = {{"budgetMs", options_.maxDowntimeMs}};
  bool switching = false;
  if (options_.postCopy) {
    budget["mode"] = "post-copy";
    budget["reason"] = "post-copy was asked for";
  } else {
    auto reply = request(record_.source, "measureCheckpoint", ctx_.timeouts.request, [&](proto::Request::Builder r) {
      r.initMeasureCheckpoint().setContainerName(record_.container);
    });
    if (!reply.get().isCheckpointSize()) fail("source " + record_.source + " answered measureCheckpoint without a size");
    auto size = reply.get().getCheckpointSize();
    CheckpointMeasure measure{size.getMemoryBytes(), size.getRootfsDiffBytes(), size.getRootfsDiffEntries()};
    auto estimate = estimateStopAndCopy(measure, ctx_.journal.history(200), record_.source, record_.target);
    bool over = estimate.ms > double(options_.maxDowntimeMs);
    // Post-copy only where it can run; else the budget is expected to be
    // missed, and the move goes as it would have without one.
    std::string refusal = size.getPostCopyRefusal().cStr();
    std::string cannot = options_.leaveRunning ? "post-copy cannot leave the source running"
                         : refusal.empty()     ? ""
                                               : record_.source + ": " + refusal;
    switching = over && cannot.empty();
    budget["stopAndCopyEstimateMs"] = estimate.ms;
    budget["basis"] = estimate.basis;
    budget["memoryBytes"] = measure.memoryBytes;
    budget["rootfsDiffBytes"] = measure.rootfsDiffBytes;
    budget["rootfsDiffEntries"] = measure.rootfsDiffEntries;
    budget["mode"] = switching ? "post-copy" : "stop-and-copy";
    budget["reason"] = std::string(over ? "stop-and-copy estimated over the budget: " :
                                          "stop-and-copy estimated within the budget: ") +
                       std::to_string(std::llround(estimate.ms)) + " ms against " +
                       std::to_string(options_.maxDowntimeMs) + " ms" +
                       (over && !cannot.empty() ? "; staying stop-and-copy (" + cannot + ")" : "");
    if (switching) {
      options_.postCopy = true;
      std::lock_guard lock(mutex_);
      record_.options = options_.toJson();
    }
    logInfo("migration " + record_.id + ": " + budget["reason"].get<std::string>() + " (" + estimate.basis + ")" +
            (switching ? "; moving post-copy" : ""));
  }
  {
    std::lock_guard lock(mutex_);
    record_.stats["downtimeBudget"] = budget;
  }
  if (switching) ctx_.journal.setOptions(record_.id, options_.toJson());
  saveStats();
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
  // An agent away for a moment (restarting) is no reason to pause: the
  // container runs on the target and the source's CRIU keeps serving. Ask
  // again within the grace; the source reports a broken transfer as
  // `failed`. Past the grace the caller pauses. The target's agent being
  // down is no reason either: the pages go between the two page relays,
  // which outlive their agents, and the source says when the last went.
  auto deadline = Clock::now() + ctx_.timeouts.finishPostCopy;
  std::optional<Clock::time_point> awaySince;
  std::optional<ReplyMessage> answer;
  while (!answer) {
    try {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      answer = request(
          record_.source, "finishPostCopy", std::max(left, std::chrono::milliseconds(1)),
          [&](proto::Request::Builder r) {
            auto finish = r.initFinishPostCopy();
            finish.setMigrationId(record_.id);
            finish.setContainerName(record_.container);
          });
    } catch (const Error& e) {
      if (e.kind() != ErrorKind::Disconnected || leaving_) throw;
      auto now = Clock::now();
      if (!awaySince) awaySince = now;
      if (now - *awaySince > ctx_.timeouts.agentGrace || now > deadline) throw;
      logWarn("migration " + record_.id + ": an agent is away while the pages go (" + e.what() + "); asking again");
      std::this_thread::sleep_for(std::min<std::chrono::milliseconds>(std::chrono::seconds(1), ctx_.timeouts.agentGrace));
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

// ---------------------------------------------------------------------------
// Post-copy after switchover: pages, pause, recovery, an operator's abandon

void Migration::recordSwitchover(bool estimated) {
  // In memory first: whatever fails from here on, nothing rolls back.
  switchedOver_ = true;
  {
    std::lock_guard lock(mutex_);
    record_.stats["switchoverAtMs"] = nowEpochMs();
    if (estimated) record_.stats["switchoverEstimated"] = true;  // found after a restart: at least this long ago
  }
  // Journalled before the next request: a restarted coordinator resumes
  // the pages instead of rolling back.
  saveStats();
}

void Migration::followPages(bool startPaused) {
  bool paused = startPaused;
  for (;;) {
    if (!paused) {
      try {
        timed(Phase::Pages, [&] { awaitPages(); });
      } catch (const std::exception& e) {
        if (leaving_) throw;
        auto [reason, kind] = rootCause(e);
        pause(reason, kind);
        paused = true;
      }
      if (!paused) {
        timed(Phase::Commit, [&] { commit(); });
        return;
      }
    }
    if (!whilePaused()) return;
    paused = false;
  }
}

void Migration::pause(const std::string& reason, ErrorKind kind) {
  logWarn("migration " + record_.id + ": paused after switchover (" + record_.target + " runs `" +
          record_.container + "`; nothing rolls back by itself): " + reason);
  {
    std::lock_guard lock(mutex_);
    record_.stats["pausedReason"] = reason;
    record_.stats["pausedAtMs"] = nowEpochMs();
    record_.stats["pauses"] = record_.stats.value("pauses", 0) + 1;
  }
  saveStats();
  journalOutcome(MigrationState::Paused, reason, kind);
  setPhase(Phase::Pages);
  emit("migration.paused");
}

void Migration::updatePausedReason(const std::string& reason, ErrorKind kind) {
  {
    std::lock_guard lock(mutex_);
    if (record_.error == reason) return;
    record_.stats["pausedReason"] = reason;
    record_.error = reason;
    record_.errorKind = std::string(kindName(kind));
  }
  logWarn("migration " + record_.id + ": still paused: " + reason);
  saveStats();
  ctx_.journal.setFailure(record_.id, MigrationState::Paused, reason, kind);
}

bool Migration::whilePaused() {
  auto nextProbe = Clock::now() + ctx_.timeouts.recoveryInterval;
  for (;;) {
    std::shared_ptr<OperatorCommand> command;
    {
      std::unique_lock lock(mutex_);
      bool woken = wake_.wait_until(lock, nextProbe, [&] {
        return leaving_ || recoverRequested_ || (command_ && !command_->taken);
      });
      if (leaving_) fail(ErrorKind::Disconnected, "coordinator is shutting down");
      if (woken && command_ && !command_->taken) {
        command = command_;
        command->taken = true;
      }
      recoverRequested_ = false;
    }
    if (command) {
      if (carryOut(*command)) return false;
      continue;
    }
    nextProbe = Clock::now() + ctx_.timeouts.recoveryInterval;
    // An agent that is away cannot say anything; the pause's reason stands.
    // Only the source's word is needed to finish: every page went.
    if (!ctx_.registry.isUp(record_.source)) continue;
    RecoveryDecision decision;
    try {
      auto source = relayStatus(record_.source);
      if (source.state == RelayState::DONE) {
        resume();
        return true;
      }
      if (!ctx_.registry.isUp(record_.target)) continue;
      auto target = relayStatus(record_.target);
      decision = decideRecovery(source, target, target.state == RelayState::ABSENT && targetRunsContainer());
      if (decision.step == RecoveryStep::Reconnect) reconnectRelays();
    } catch (const std::exception& e) {
      if (leaving_) throw;
      logWarn("migration " + record_.id + ": paused; asking the page relays: " + e.what());
      continue;
    }
    if (decision.step == RecoveryStep::StayPaused) {
      updatePausedReason(decision.reason, ErrorKind::Failed);
      continue;
    }
    resume();
    return true;
  }
}

RelayReport Migration::relayStatus(const std::string& host) {
  auto reply = request(host, "postCopyStatus", ctx_.timeouts.request, [&](proto::Request::Builder r) {
    auto ref = r.initPostCopyStatus();
    ref.setMigrationId(record_.id);
    ref.setContainerName(record_.container);
  });
  if (!reply.get().isPostCopy()) fail(host + " answered postCopyStatus without a status");
  return RelayReport::fromProto(host, reply.get().getPostCopy());
}

bool Migration::targetRunsContainer() {
  for (auto& c : listContainersOn(record_.target)) {
    if (c.name == record_.container) return c.state == "running";
  }
  return false;
}

void Migration::reconnectRelays() {
  // Every page channel gets its own one-time key (DESIGN.md's data plane),
  // the reconnected one too. The target first: it must expect the key
  // before the source's relay dials with it.
  psk_ = randomBytes(32);
  for (const std::string* host : {&record_.target, &record_.source}) {
    request(*host, "resumePostCopy", ctx_.timeouts.request, [&](proto::Request::Builder r) {
      auto resume = r.initResumePostCopy();
      resume.setMigrationId(record_.id);
      resume.setContainerName(record_.container);
      resume.setPsk(bytesOf(psk_));
    });
  }
  logInfo("migration " + record_.id + ": page channel " + record_.source + " -> " + record_.target +
          " reconnects with a fresh key");
}

void Migration::resume() {
  {
    std::lock_guard lock(mutex_);
    record_.stats.erase("pausedReason");
    record_.stats.erase("pausedAtMs");
    peerError_.clear();  // the pause's cause; the next failure reports its own
    // An abandon asked for while this probe ran comes too late.
    if (command_ && !command_->taken) {
      command_->taken = command_->done = true;
      command_->refusal = std::make_exception_ptr(Error(
          ErrorKind::Conflict, "migration " + record_.id + " recovered (its pages flow again) before the abandon "
                                                           "was taken; it is no longer paused"));
      wake_.notify_all();
    }
  }
  saveStats();
  journalOutcome(MigrationState::Restoring, "", ErrorKind::Failed);
  setPhase(Phase::Pages);
  logInfo("migration " + record_.id + ": resumed; waiting for the pages again");
  emit("migration.resumed");
}

bool Migration::carryOut(OperatorCommand& command) {
  auto answer = [&](std::exception_ptr refusal) {
    std::lock_guard lock(mutex_);
    command.done = true;
    command.refusal = refusal;
    wake_.notify_all();
  };
  try {
    if (command.keep == KeepSide::Source) keepSource([&] { answer(nullptr); });
    else keepTarget([&] { answer(nullptr); });
    return true;
  } catch (...) {
    bool decided;
    {
      std::lock_guard lock(mutex_);
      decided = command.done;
    }
    if (decided) throw;  // the journal failed after the decision; run() leaves it for the next start
    answer(std::current_exception());
    return false;  // refused: still paused
  }
}

void Migration::keepSource(const std::function<void()>& decided) {
  // Once the source's CRIU sent the last page it let go of the frozen copy:
  // killing the target then would lose the container altogether.
  RelayReport source;
  try {
    source = relayStatus(record_.source);
  } catch (const Error& e) {
    // An agent without relays (an older build) still holds its frozen copy
    // until told; rollbackSource says if it does not.
    if (e.kind() != ErrorKind::Unimplemented) {
      fail(e.kind(), "cannot keep " + record_.source + "'s copy: cannot tell whether it still holds it (" +
                         e.what() + ")");
    }
  }
  if (source.state == RelayState::DONE) {
    fail(ErrorKind::Conflict, record_.source + " already sent every page, so its CRIU let go of the frozen copy: "
                                               "there is no source copy to keep — keep the target");
  }
  std::string lost = lostByKeepingSource(record_.target, record().stats.value("switchoverAtMs", int64_t(0)), nowEpochMs());
  std::string error = "abandoned by an operator, keeping " + record_.source + "'s copy; lost: " + lost;
  {
    std::lock_guard lock(mutex_);
    record_.stats["kept"] = "source";
    record_.stats["lost"] = lost;
    record_.stats["rollbackFrom"] = std::string(stateName(MigrationState::Paused));
    record_.stats["rollbackCause"] = error;
  }
  saveStats();
  journalOutcome(MigrationState::RollingBack, error, ErrorKind::Cancelled);
  logWarn("migration " + record_.id + ": " + error);
  setPhase(Phase::Rollback);
  decided();
  // The target's copy goes first (abortReceive), then the source resumes:
  // never two running. A target away keeps it `rolling-back` until it answers.
  undoOnHosts(true, error, ErrorKind::Cancelled);
}

void Migration::keepTarget(const std::function<void()>& decided) {
  // Either side can vouch that the target has every page.
  std::optional<RelayReport> target, source;
  std::string unknown;
  try {
    target = relayStatus(record_.target);
  } catch (const std::exception& e) {
    unknown = e.what();
  }
  if (!target || target->state != RelayState::DONE) {
    try {
      source = relayStatus(record_.source);
    } catch (const std::exception& e) {
      unknown += (unknown.empty() ? "" : "; ") + std::string(e.what());
    }
  }
  bool sourceDone = source && source->state == RelayState::DONE;
  if (!target && !sourceDone) {
    fail(ErrorKind::Disconnected, "cannot keep " + record_.target + "'s copy: cannot tell whether it has every page (" +
                                      unknown + ")");
  }
  RelayReport absent;
  absent.host = record_.source;
  if (!target) target = RelayReport{record_.target, RelayState::DONE, {}, 0, 0};  // the source's `done` vouches
  if (auto refusal = refusalToKeepTarget(source ? *source : absent, *target)) fail(ErrorKind::Conflict, *refusal);

  std::string lost = "nothing: " + record_.target + " has every page; " + record_.source + "'s frozen copy is dropped";
  {
    std::lock_guard lock(mutex_);
    record_.stats["kept"] = "target";
    record_.stats["lost"] = lost;
    record_.stats["totalMs"] = msSince(started_);
  }
  saveStats();
  // The commit point, as commit(): the container is the target's from here.
  ctx_.journal.recordCommit(record_.id, record_.container, record_.target);
  journalOutcome(MigrationState::Committed, "", ErrorKind::Failed);
  logWarn("migration " + record_.id + ": abandoned by an operator, keeping " + record_.target + "'s copy");
  decided();
  emit("migration.abandoned");
  setPhase(Phase::Commit);
  finishCommit();
}

bool Migration::targetSwitchedOver() {
  // The relay exists from the restore on: absent means it never ran there.
  return relayStatus(record_.target).state != RelayState::ABSENT;
}

void Migration::recoverNow() {
  std::lock_guard lock(mutex_);
  if (record_.state != MigrationState::Paused) {
    fail(ErrorKind::Conflict, "migration " + record_.id + " is " + std::string(stateName(record_.state)) +
                                  ", not paused: nothing to recover");
  }
  recoverRequested_ = true;
  wake_.notify_all();
}

void Migration::abandonKeeping(KeepSide keep) {
  auto command = std::make_shared<OperatorCommand>();
  command->keep = keep;
  std::unique_lock lock(mutex_);
  if (record_.state != MigrationState::Paused) {
    fail(ErrorKind::Conflict, "migration " + record_.id + " is " + std::string(stateName(record_.state)) +
                                  ", not paused: only a paused migration can be abandoned");
  }
  if (command_ && !command_->done) {
    fail(ErrorKind::Conflict, "migration " + record_.id + ": an abandon is being decided already");
  }
  command_ = command;
  wake_.notify_all();
  // The decision asks an agent or two (postCopyStatus) before it journals.
  auto limit = 3 * ctx_.timeouts.request;
  bool answered = wake_.wait_for(lock, limit, [&] { return command->done || leaving_; });
  if (!command->done) {
    fail(ErrorKind::Disconnected,
         "migration " + record_.id + ": abandon not decided within " +
             std::to_string(std::chrono::duration_cast<std::chrono::seconds>(limit).count()) + " s" +
             (answered ? " (coordinator shutting down)" : "") + "; `migrate status " + record_.id +
             "` shows whether it was");
  }
  if (command->refusal) std::rethrow_exception(command->refusal);
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
      if (leaving_) return;
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
  // An operator's `abandon --keep target` ends `abandoned`, its reason kept.
  bool kept = record().stats.contains("kept");
  MigrationState final = kept ? MigrationState::Abandoned : MigrationState::Succeeded;
  std::string error = kept ? "abandoned by an operator, keeping " + record_.target + "'s copy" : std::string();
  journalOutcome(final, error, ErrorKind::Cancelled);
  setPhase(Phase::Done);
  logInfo("migration " + record_.id + ": `" + record_.container + "` now runs on " + record_.target);
}

std::pair<std::string, ErrorKind> Migration::rootCause(const std::exception& cause) {
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
  return {error, kind};
}

void Migration::rollback(const std::exception& cause) {
  MigrationState reached = record().state;
  auto [error, kind] = rootCause(cause);
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
  journalOutcome(MigrationState::RollingBack, error, kind);
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
  // An operator's `abandon --keep source` ends `abandoned`.
  bool kept = record().stats.contains("kept");
  MigrationState final = kept ? MigrationState::Abandoned : MigrationState::RolledBack;
  journalOutcome(final, error, kind);
  setPhase(Phase::Done);
  logInfo("migration " + record_.id + ": " + (kept ? "abandoned" : "rolled back") + "; `" + record_.container +
          "` runs on " + record_.source);
  emit(kept ? "migration.abandoned" : "migration.failed");
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
        journalOutcome(MigrationState::Failed, error, ErrorKind::Disconnected);
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
      case RecoveryAction::RollBack:
        rollBackAfterRestart();
        break;
      case RecoveryAction::ResumePaused:
        setPhase(Phase::Pages);
        followPages(true);
        break;
      case RecoveryAction::AwaitPages:
        followPages(false);
        break;
      case RecoveryAction::AskTarget: {
        // The restore may have replied (the container runs there) just
        // before the crash, its switchover unjournalled. Rolling back then
        // would lose the target's writes; so only if the target never had
        // a relay for it. A target that cannot say: ask again later.
        bool switchedOver = false;
        try {
          switchedOver = targetSwitchedOver();
        } catch (const std::exception& e) {
          logWarn("migration " + record_.id + ": cannot tell whether " + record_.target + " runs `" +
                  record_.container + "` (" + e.what() + "); asking again later");
          return;
        }
        if (!switchedOver) {
          rollBackAfterRestart();
          break;
        }
        recordSwitchover(true);
        followPages(false);
        break;
      }
    }
  } catch (const std::exception& e) {
    logError(std::string("migration ") + record_.id + ": recovery: " + e.what());
  }
}

void Migration::rollBackAfterRestart() {
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

void Migration::leaveForRestart() {
  std::lock_guard lock(mutex_);
  leaving_ = true;
  wake_.notify_all();  // a paused migration's wait
}

// ---------------------------------------------------------------------------
// Helpers

void Migration::enter(MigrationState state) {
  // Journalled first: a crash right after this line must find the state that
  // says what may have been sent.
  ctx_.journal.setState(record_.id, state);
  std::lock_guard lock(mutex_);
  record_.state = state;
}

void Migration::journalOutcome(MigrationState state, const std::string& error, ErrorKind kind) {
  // Journalled first, as every transition (enter()).
  ctx_.journal.setFailure(record_.id, state, error, kind);
  std::lock_guard lock(mutex_);
  record_.state = state;
  record_.error = error;
  record_.errorKind = error.empty() ? std::string() : std::string(kindName(kind));
}

void Migration::throwIfStopped() {
  if (leaving_) fail(ErrorKind::Disconnected, "coordinator is shutting down");
  // A cancel stops the way forward, never the way back.
  if (cancelled_ && !undoing_) fail(ErrorKind::Cancelled, "cancelled by request");
}

ReplyMessage Migration::request(const std::string& host, const std::string& what, std::chrono::milliseconds timeout,
                                const AgentLink::RequestFiller& fill, const std::string& alsoWatch) {
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
  return ctx_.link.call(CallSpec{host, what, record_.id, timeout, requestId, alsoWatch}, fill);
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
