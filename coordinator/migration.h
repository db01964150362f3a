// One migration of one container from a source host to a target host, as the
// steps of DESIGN.md: precheck(), prepareTarget(), checkpointAndStream(),
// restore(), commit(), or rollback() on the way.
//
// The invariant it keeps: a container runs on at most one host at a time, and
// no checkpoint is deleted before another host runs it. Hence:
//  - each transition is journalled before it is acted on;
//  - the owners table naming the target is the commit point; commitSource
//    (which deletes the source's checkpoint) is only sent after it, and a
//    failed commitSource is retried, never rolled back;
//  - rollback aborts the target before it restores the source, and once
//    restore was sent to the target, the source is restored only after the
//    target confirmed the abort (else the container could run twice).
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "common/phase.h"
#include "coordinator/agent-link.h"
#include "coordinator/host-registry.h"
#include "coordinator/journal.h"

namespace migrate {

struct MigrationTimeouts {
  std::chrono::milliseconds request = std::chrono::seconds(30);  // quick requests: lists, prepare, abort
  std::chrono::milliseconds checkpointAndSend = std::chrono::hours(1);
  std::chrono::milliseconds restore = std::chrono::minutes(10);
  std::chrono::milliseconds sendImage = std::chrono::hours(1);
  std::chrono::milliseconds commitSource = std::chrono::minutes(2);
  std::chrono::milliseconds finishPostCopy = std::chrono::hours(1);
  std::chrono::milliseconds rollbackSource = std::chrono::minutes(10);
};

struct MigrationOptions {
  bool tcpEstablished = true;
  bool leaveRunning = false;
  // Post-copy (CRIU lazy pages): the target runs the container before its
  // memory arrived and fetches pages on demand from the frozen source. Short
  // downtime whatever the memory size; until the last page went, losing the
  // source host loses the container.
  bool postCopy = false;

  nlohmann::json toJson() const;
  // The one reading of options, for a request body (POST /v1/migrations,
  // whose other fields it ignores) and a journalled record alike: a missing
  // or null field keeps its default; another type is Error(InvalidInput).
  static MigrationOptions fromJson(const nlohmann::json& j);
};

// Events for outbound hooks: "migration.started", "migration.succeeded",
// "migration.failed", with the migration as migrationToJson() shows it.
using MigrationEventSink = std::function<void(const std::string& event, const MigrationRecord& record)>;

struct MigrationContext {
  Journal& journal;
  AgentLink& link;
  HostRegistry& registry;
  MigrationEventSink onEvent;
  MigrationTimeouts timeouts;
};

// What a restarted coordinator does with a journalled migration.
enum class RecoveryAction {
  Nothing,       // Final state.
  MarkFailed,    // Nothing was sent to any agent yet (or only read-only prechecks).
  FinishCommit,  // The owners table names the target: the container lives there; clean the source.
  RollBack,      // Anything between prepareReceive and the commit point.
};
RecoveryAction recoveryActionFor(const MigrationRecord& record, const std::optional<std::string>& owner);

// Live progress of a running migration.
struct LiveProgress {
  Phase phase = Phase::Pending;
  uint64_t bytesDone = 0;
  uint64_t bytesTotal = 0;
  double rateBytesPerSec = 0;
  std::optional<double> etaSeconds;
};

// The API's view of a migration: the journalled record, plus live progress if
// it is running here.
nlohmann::json migrationToJson(const MigrationRecord& record, const std::optional<LiveProgress>& live);

class Migration {
 public:
  Migration(MigrationContext& context, MigrationRecord record);

  const std::string& id() const { return record_.id; }
  const std::string& container() const { return record_.container; }

  // The whole migration on the calling thread. Never throws: the outcome is
  // in the journal.
  void run();
  // For a journalled migration found unfinished (restart, or a rollback or
  // commit cleanup that failed earlier): finish the commit or roll back.
  void recover();

  // Stops at the next phase boundary (and asks the agent doing the current
  // step to stop). Too late once committed: returns false then.
  bool cancel();
  // Coordinator shutdown: stop without journalling anything more, so the
  // next start recovers from the last journalled state.
  void abandon();

  void onProgress(const ProgressUpdate& update);
  LiveProgress progress() const;
  MigrationRecord record() const;

 private:
  // The steps.
  void precheck();
  void prepareTarget();
  void checkpointAndStream();
  void restore();
  void awaitPages();
  void commit();
  void rollback(const std::exception& cause);

  // Pieces of the steps.
  void checkContainerOnSource();
  std::vector<ContainerSummary> listContainersOn(const std::string& host);
  void refreshHosts();
  std::string peerError_;  // a failure an agent reported through progress (guarded by mutex_)
  ErrorKind peerErrorKind_ = ErrorKind::Failed;
  void checkNameFreeOnTarget(const std::vector<ContainerSummary>& targetContainers);
  void checkIdMappingFreeOnTarget(const std::vector<ContainerSummary>& targetContainers);
  void ensureImageOnTarget();
  void checkCpuCompatible();
  void checkCapacity();
  void finishCommit();
  // abortReceive on the target, then rollbackSource on the source. Returns
  // false (journalled as still rolling back, retried later) when a step failed.
  bool undoOnHosts(bool targetMayRun, const std::string& error, ErrorKind kind);

  void enter(MigrationState state);
  void throwIfStopped();
  ReplyMessage request(const std::string& host, const std::string& what, std::chrono::milliseconds timeout,
                       const AgentLink::RequestFiller& fill);
  template <typename Step>
  void timed(Phase phase, Step step);
  void setPhase(Phase phase);
  void saveStats();
  void emit(const char* event);

  MigrationContext& ctx_;
  mutable std::mutex mutex_;  // record_, live progress, current request
  MigrationRecord record_;
  MigrationOptions options_;
  HostState source_, target_;
  ContainerSummary containerInfo_;
  std::string psk_;
  uint16_t port_ = 0;
  std::string sourceSha256_;
  std::chrono::steady_clock::time_point started_;
  std::chrono::steady_clock::time_point freezeStarted_;
  std::atomic<bool> cancelled_{false};
  std::atomic<bool> undoing_{false};  // rolling back: a cancel no longer stops requests
  std::atomic<bool> abandoned_{false};

  LiveProgress live_;
  std::chrono::steady_clock::time_point rateSince_;
  uint64_t rateSinceBytes_ = 0;
  std::optional<std::pair<std::string, uint64_t>> current_;  // host, requestId
};

// Fresh random bytes (OpenSSL RAND_bytes) for one-time keys.
std::string randomBytes(size_t count);
std::string newMigrationId();

}  // namespace migrate
