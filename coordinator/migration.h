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
//    target confirmed the abort (else the container could run twice);
//  - post-copy: once the target's restore replied (switchover, journalled
//    as stats.switchoverAtMs) the target runs the container and the
//    source's frozen copy is history. A failure then pauses the migration
//    (state `paused`); it recovers when the broken part is back, and only an
//    operator may drop a side (abandonKeeping). Never an automatic rollback.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "common/phase.h"
#include "coordinator/agent-link.h"
#include "coordinator/host-registry.h"
#include "coordinator/journal.h"
#include "coordinator/post-copy-recovery.h"

namespace migrate {

struct MigrationTimeouts {
  std::chrono::milliseconds request = std::chrono::seconds(30);  // quick requests: lists, prepare, abort
  std::chrono::milliseconds checkpointAndSend = std::chrono::hours(1);
  std::chrono::milliseconds restore = std::chrono::minutes(10);
  std::chrono::milliseconds sendImage = std::chrono::hours(1);
  std::chrono::milliseconds commitSource = std::chrono::minutes(2);
  std::chrono::milliseconds finishPostCopy = std::chrono::hours(1);
  std::chrono::milliseconds rollbackSource = std::chrono::minutes(10);
  // Post-copy past switchover: how long an agent may be away (or its
  // request unanswered) before the migration pauses, and how often a paused
  // one asks both relays how they are.
  std::chrono::milliseconds agentGrace = std::chrono::seconds(10);
  std::chrono::milliseconds recoveryInterval = std::chrono::seconds(2);
};

struct MigrationOptions {
  bool tcpEstablished = true;
  bool leaveRunning = false;
  // Post-copy (CRIU lazy pages): the target runs the container before its
  // memory arrived and fetches pages on demand from the frozen source. Short
  // downtime whatever the memory size; until the last page went, losing the
  // source host loses the container.
  bool postCopy = false;
  // A downtime budget: when a stop-and-copy is estimated to miss it, the
  // move goes post-copy instead (coordinator/downtime-estimate.h); 0: none.
  uint64_t maxDowntimeMs = 0;

  nlohmann::json toJson() const;
  // The one reading of options, for a request body (POST /v1/migrations,
  // whose other fields it ignores) and a journalled record alike: a missing
  // or null field keeps its default; another type is Error(InvalidInput).
  static MigrationOptions fromJson(const nlohmann::json& j);
};

// Events for outbound hooks: "migration.started", "migration.succeeded",
// "migration.failed", "migration.paused", "migration.resumed",
// "migration.abandoned", with the migration as migrationToJson() shows it.
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
  RollBack,      // Anything between prepareReceive and the commit point, before switchover.
  ResumePaused,  // Post-copy, paused: the recovery loop again.
  AwaitPages,    // Post-copy, restoring past switchover: wait for the pages again (paused on failure).
  AskTarget,     // Post-copy, restoring, no switchover journalled: the target's relay says whether it runs.
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
  // commit cleanup that failed earlier): finish the commit or roll back, or,
  // post-copy past switchover, follow the pages again (paused on failure).
  void recover();

  // Stops at the next phase boundary (and asks the agent doing the current
  // step to stop). Too late once the target restores: returns false then.
  bool cancel();
  // Coordinator shutdown: stop without journalling anything more, so the
  // next start recovers from the last journalled state.
  void leaveForRestart();

  // Operator verbs on a paused migration; Error(Conflict) naming the state
  // otherwise. recoverNow wakes the recovery loop at once. abandonKeeping
  // hands the decision to the migration's thread and returns once it is
  // journalled (the hosts' cleanup follows there): Conflict when that side
  // cannot be kept (the target lacks pages; the source's copy is gone).
  void recoverNow();
  void abandonKeeping(KeepSide keep);

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
  // Post-copy after switchover: pages, pause and recovery, commit or an
  // operator's abandon. Returns when the migration is final or committed.
  void followPages(bool startPaused);
  // `estimated`: found after a coordinator restart, the time is now's.
  void recordSwitchover(bool estimated = false);
  void pause(const std::string& reason, ErrorKind kind);
  // While paused: returns true to wait for the pages again, false once an
  // operator ended the migration.
  bool whilePaused();
  void resume();
  void reconnectRelays();
  RelayReport relayStatus(const std::string& host);
  void updatePausedReason(const std::string& reason, ErrorKind kind);
  bool targetRunsContainer();
  // The operator's abandon, on the migration's thread: decide and journal
  // (throws the refusal), then answer the caller, then clean up the hosts.
  struct OperatorCommand;
  // True when the migration ended (or left for the hosts' cleanup); false
  // when refused (the refusal goes to the caller) and still paused.
  bool carryOut(OperatorCommand& command);
  void keepSource(const std::function<void()>& decided);
  void keepTarget(const std::function<void()>& decided);
  // Restart in `restoring` without a journalled switchover: true if the
  // target's relay exists (it may run the container), false if absent.
  // Throws when the target cannot tell.
  bool targetSwitchedOver();

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
  void applyDowntimeBudget();
  void finishCommit();
  // The cause of a failed step, with what the other side reported about it.
  std::pair<std::string, ErrorKind> rootCause(const std::exception& e);
  // abortReceive on the target, then rollbackSource on the source. Returns
  // false (journalled as still rolling back, retried later) when a step failed.
  bool undoOnHosts(bool targetMayRun, const std::string& error, ErrorKind kind);
  // recover()'s rollback of a migration found between prepare and commit.
  void rollBackAfterRestart();

  void enter(MigrationState state);
  // state, error and kind journalled (an empty error clears both), then in record_.
  void journalOutcome(MigrationState state, const std::string& error, ErrorKind kind);
  void throwIfStopped();
  ReplyMessage request(const std::string& host, const std::string& what, std::chrono::milliseconds timeout,
                       const AgentLink::RequestFiller& fill, const std::string& alsoWatch = {});
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
  std::atomic<bool> leaving_{false};  // coordinator shutdown: journal nothing more
  std::atomic<bool> switchedOver_{false};

  // An operator's verb for the migration's thread (guarded by mutex_).
  struct OperatorCommand {
    KeepSide keep = KeepSide::Source;
    bool taken = false, done = false;
    std::exception_ptr refusal;
  };
  std::shared_ptr<OperatorCommand> command_;
  bool recoverRequested_ = false;
  std::condition_variable wake_;  // command_, recoverRequested_, leaving_, command done

  LiveProgress live_;
  std::chrono::steady_clock::time_point rateSince_;
  uint64_t rateSinceBytes_ = 0;
  std::optional<std::pair<std::string, uint64_t>> current_;  // host, requestId
};

// Fresh random bytes (OpenSSL RAND_bytes) for one-time keys.
std::string randomBytes(size_t count);
std::string newMigrationId();

}  // namespace migrate
