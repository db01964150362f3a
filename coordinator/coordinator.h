// The coordinator's operations, as the HTTP API (and so the CLI) sees them:
// hosts and containers across the cluster, migrations (one thread each, at
// most one per container), evacuations, and recovery of migrations a previous
// run left unfinished. Dependencies are passed in from main().
#pragma once

#include <atomic>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "common/worker-threads.h"
#include "coordinator/agent-link.h"
#include "coordinator/evacuation-planner.h"
#include "coordinator/host-registry.h"
#include "coordinator/journal.h"
#include "coordinator/migration.h"
#include "coordinator/webhooks.h"

namespace migrate {

struct CoordinatorOptions {
  MigrationTimeouts timeouts;
  // How often unfinished migrations (a rollback waiting for a host, a source
  // cleanup that failed) are retried; also on every host registration.
  std::chrono::milliseconds retryInterval = std::chrono::seconds(5);
  int defaultParallel = 2;  // Evacuation: migrations at once.
  // Also told every migration event the hooks get (tests); may be empty.
  MigrationEventSink observer;
};

struct RunContainerRequest {
  std::string host;  // Empty: the up host with the most free memory.
  std::string name;
  std::string image;
  std::vector<std::string> args;
  std::vector<std::string> env;
  bool tcpEstablished = true;
  // false: a user namespace of its own, mapped by the host's agent; true:
  // the host's (root in the container is root on the host).
  bool hostUserns = false;
  std::string user;  // "uid[:gid]" inside the container, checked by the agent; empty: the image's
};

struct MigrationRequest {
  std::string container;
  std::string target;
  MigrationOptions options;
};

struct EvacuationRequest {
  std::string host;
  std::vector<std::string> targets;  // Empty: every other host.
  int parallel = 0;                  // 0: CoordinatorOptions::defaultParallel.
  bool postCopy = false;             // MigrationOptions::postCopy for each move
};

struct EvacuationResult {
  std::vector<std::string> migrationIds;
  std::vector<std::pair<std::string, std::string>> unplaced;  // container, reason
  nlohmann::json toJson() const;
};

class Coordinator {
 public:
  // `hooks` may be null (no outbound hooks).
  Coordinator(Journal& journal, HostRegistry& registry, AgentLink& link, Webhooks* hooks, CoordinatorOptions options);
  ~Coordinator();
  Coordinator(const Coordinator&) = delete;
  Coordinator& operator=(const Coordinator&) = delete;

  // Hooks itself into the link's callbacks and starts the retry thread, whose
  // first round recovers what the journal holds unfinished.
  void start();
  // Leaves running migrations in their journalled state (the next start
  // recovers them), stops the link, joins every thread.
  void shutdown();

  nlohmann::json hosts() const;
  nlohmann::json containers();
  nlohmann::json runContainer(const RunContainerRequest& request);
  void removeContainer(const std::string& name, bool force);
  nlohmann::json stopContainer(const std::string& name);
  std::string containerLogs(const std::string& name, uint32_t tail);

  // Returns the new migration's id; the migration runs on its own thread.
  std::string startMigration(const MigrationRequest& request);
  nlohmann::json migration(const std::string& id);
  nlohmann::json history(size_t limit);
  nlohmann::json cancelMigration(const std::string& id);
  // A paused post-copy migration (Error(Conflict) naming the state for any
  // other): retry its recovery now; or drop one side, as Migration::
  // abandonKeeping decides. Both return the migration.
  nlohmann::json recoverMigration(const std::string& id);
  nlohmann::json abandonMigration(const std::string& id, KeepSide keep);
  EvacuationResult evacuate(const EvacuationRequest& request);

  // A host by name, or by its data address (Alertmanager's `instance`).
  std::optional<std::string> resolveHost(const std::string& nameOrAddress) const;

  // Blocks until no migration runs here; for tests.
  void waitIdle();

 private:
  struct EvacuationQueue;

  std::string locate(const std::string& container);
  void checkNotBusyLocked(const std::string& container);
  std::shared_ptr<Migration> createMigrationLocked(const std::string& container, const std::string& source,
                                                   const std::string& target, const MigrationOptions& options);
  // The running migration `id` for an operator's `verb`; Error(Conflict) if
  // it does not run here (final, or not taken up yet).
  std::shared_ptr<Migration> pausedMigration(const std::string& id, const char* verb);
  void launch(std::function<void()> body);
  void finished(const std::string& id);
  void retryLoop();
  void retryUnfinished();
  void adoptOwners(const std::string& host);
  void onEvent(const std::string& event, const MigrationRecord& record);
  ReplyMessage hostRequest(const std::string& host, const std::string& what,
                           const AgentLink::RequestFiller& fill);

  Journal& journal_;
  HostRegistry& registry_;
  AgentLink& link_;
  Webhooks* hooks_;
  CoordinatorOptions options_;
  MigrationContext context_;

  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::map<std::string, std::shared_ptr<Migration>> active_;  // by id
  std::set<std::string> registeredHosts_;                     // to adopt containers from
  bool stopping_ = false;
  bool retryNow_ = false;

  WorkerThreads workers_;  // one per migration and evacuation
  std::thread retryThread_;
};

}  // namespace migrate
