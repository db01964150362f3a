#include "coordinator/coordinator.h"

#include <algorithm>
#include <deque>

#include "common/log.h"

namespace migrate {

using nlohmann::json;

struct Coordinator::EvacuationQueue {
  std::mutex mutex;
  std::deque<std::shared_ptr<Migration>> waiting;
};

json EvacuationResult::toJson() const {
  json out = {{"migrations", migrationIds}, {"unplaced", json::array()}};
  for (auto& [container, reason] : unplaced) out["unplaced"].push_back({{"container", container}, {"reason", reason}});
  return out;
}

Coordinator::Coordinator(Journal& journal, HostRegistry& registry, AgentLink& link, Webhooks* hooks,
                         CoordinatorOptions options)
    : journal_(journal),
      registry_(registry),
      link_(link),
      hooks_(hooks),
      options_(options),
      context_{journal, link, registry,
               [this](const std::string& event, const MigrationRecord& record) { onEvent(event, record); },
               options.timeouts} {}

Coordinator::~Coordinator() { shutdown(); }

void Coordinator::start() {
  link_.onProgress([this](const ProgressUpdate& update) {
    std::shared_ptr<Migration> migration;
    {
      std::lock_guard lock(mutex_);
      auto it = active_.find(update.migrationId);
      if (it != active_.end()) migration = it->second;
    }
    if (migration) migration->onProgress(update);
  });
  link_.onRegistered([this](const std::string& host) {
    // The poll thread must not block on SQLite: the retry thread adopts the
    // host's containers and retries what waited for it.
    std::lock_guard lock(mutex_);
    registeredHosts_.insert(host);
    retryNow_ = true;
    changed_.notify_all();
  });
  retryThread_ = std::thread([this] { retryLoop(); });
}

void Coordinator::shutdown() {
  {
    std::lock_guard lock(mutex_);
    if (stopping_) return;
    stopping_ = true;
    for (auto& [id, migration] : active_) migration->leaveForRestart();
    changed_.notify_all();
  }
  // Wakes every migration blocked on an agent with Disconnected; left for
  // the restart, they return without journalling anything.
  link_.stop();
  if (retryThread_.joinable()) retryThread_.join();
  workers_.joinAll();
}

// ---------------------------------------------------------------------------
// Threads

void Coordinator::launch(std::function<void()> body) { workers_.start(std::move(body), "coordinator: worker"); }

void Coordinator::finished(const std::string& id) {
  std::lock_guard lock(mutex_);
  active_.erase(id);
  changed_.notify_all();
}

void Coordinator::waitIdle() {
  std::unique_lock lock(mutex_);
  changed_.wait(lock, [&] { return active_.empty() || stopping_; });
}

void Coordinator::retryLoop() {
  bool first = true;
  for (;;) {
    std::set<std::string> hosts;
    {
      std::unique_lock lock(mutex_);
      if (!first) {
        changed_.wait_for(lock, options_.retryInterval, [&] { return stopping_ || retryNow_; });
      }
      if (stopping_) return;
      retryNow_ = false;
      hosts.swap(registeredHosts_);
    }
    first = false;
    try {
      for (auto& host : hosts) adoptOwners(host);
      retryUnfinished();
    } catch (const std::exception& e) {
      logError(std::string("coordinator: retry: ") + e.what());
    }
    workers_.reapFinished();
  }
}

// Containers a host reports running that the owners table does not know yet
// (created before this coordinator kept a journal, or by hand) become that
// host's; a conflicting owner is reported, never overwritten: only a commit
// moves ownership.
void Coordinator::adoptOwners(const std::string& host) {
  auto state = registry_.findIfExists(host);
  if (!state) return;
  for (auto& c : state->containers) {
    if (c.state != "running") continue;
    auto owner = journal_.ownerIfExists(c.name);
    if (!owner) {
      journal_.setOwner(c.name, host);
    } else if (*owner != host) {
      bool migrating = false;
      {
        std::lock_guard lock(mutex_);
        for (auto& [id, m] : active_) migrating |= m->container() == c.name;
      }
      if (!migrating) {
        logWarn("coordinator: `" + c.name + "` runs on " + host + " but the journal says its owner is " + *owner);
      }
    }
  }
}

void Coordinator::retryUnfinished() {
  for (auto& record : journal_.unfinished()) {
    std::shared_ptr<Migration> migration;
    {
      std::lock_guard lock(mutex_);
      if (stopping_ || active_.count(record.id)) continue;
      // Re-read under the lock: a recovery that just finished removed itself
      // from active_ after the list above was taken.
      auto fresh = journal_.findIfExists(record.id);
      if (!fresh || isFinal(fresh->state)) continue;
      record = *fresh;
      auto action = recoveryActionFor(record, journal_.ownerIfExists(record.container));
      // A rollback and a commit cleanup need the source; waiting for it
      // avoids a failed call every round while it is down. A post-copy
      // migration past switchover runs its own loop (paused while a host is
      // away, open to an operator's verbs); only asking the target whether it
      // switched over needs the target.
      bool needsSource = action == RecoveryAction::RollBack || action == RecoveryAction::FinishCommit;
      if (needsSource && !registry_.isUp(record.source)) continue;
      if (action == RecoveryAction::AskTarget && !registry_.isUp(record.target)) continue;
      migration = std::make_shared<Migration>(context_, record);
      active_[record.id] = migration;
    }
    logInfo("coordinator: recovering migration " + record.id + " of `" + record.container + "` (" +
            std::string(stateName(record.state)) + ")");
    launch([this, migration] {
      migration->recover();
      finished(migration->id());
    });
  }
}

void Coordinator::onEvent(const std::string& event, const MigrationRecord& record) {
  logInfo("event " + event + ": " + record.id + " `" + record.container + "` " + record.source + " -> " +
          record.target + " (" + std::string(stateName(record.state)) + ")");
  if (hooks_) hooks_->post(event, migrationToJson(record, std::nullopt));
  if (options_.observer) options_.observer(event, record);
}

// ---------------------------------------------------------------------------
// Hosts and containers

json Coordinator::hosts() const {
  json out = json::array();
  for (auto& h : registry_.list()) out.push_back(h.toJson());
  return out;
}

json Coordinator::containers() {
  auto owners = journal_.owners();
  json out = json::array();
  std::set<std::string> seen;
  for (auto& h : registry_.list()) {
    for (auto& c : h.containers) {
      json j = c.toJson();
      j["host"] = h.name;
      j["hostUp"] = h.up;
      auto owner = owners.find(c.name);
      j["owner"] = owner != owners.end() && owner->second == h.name;
      out.push_back(std::move(j));
      seen.insert(c.name);
    }
  }
  // Owned containers whose host has not reported (down, or not registered yet).
  for (auto& [name, host] : owners) {
    if (seen.count(name)) continue;
    out.push_back({{"name", name}, {"host", host}, {"hostUp", registry_.isUp(host)}, {"owner", true},
                   {"state", "unknown"}});
  }
  return out;
}

std::string Coordinator::locate(const std::string& container) {
  auto owner = journal_.ownerIfExists(container);
  std::vector<std::string> reporting, running;
  for (auto& h : registry_.list()) {
    if (auto c = h.findContainer(container)) {
      reporting.push_back(h.name);
      if (c->state == "running") running.push_back(h.name);
    }
  }
  if (owner) {
    // The journal names the owner and only a commit changes it: another
    // host's report of the same name (a stale copy, or a hostile agent
    // claiming names) never redirects a request there.
    if (std::find(reporting.begin(), reporting.end(), *owner) != reporting.end()) return *owner;
    if (!registry_.isUp(*owner)) {
      fail(ErrorKind::Disconnected, "container `" + container + "` belongs to " + *owner + ", which is down");
    }
    fail(ErrorKind::NotFound, "container `" + container + "` belongs to " + *owner + ", which does not report it");
  }
  if (running.size() == 1) return running[0];
  if (reporting.size() == 1) return reporting[0];
  if (reporting.empty()) fail(ErrorKind::NotFound, "container `" + container + "` not found on any host");
  std::string list;
  for (auto& h : reporting) list += (list.empty() ? "" : ", ") + h;
  fail(ErrorKind::Conflict, "container `" + container + "` exists on several hosts (" + list + ")");
}

ReplyMessage Coordinator::hostRequest(const std::string& host, const std::string& what,
                                      const AgentLink::RequestFiller& fill) {
  return link_.call(CallSpec{host, what, "", options_.timeouts.request, 0}, fill);
}

json Coordinator::runContainer(const RunContainerRequest& request) {
  if (request.name.empty()) fail(ErrorKind::InvalidInput, "run: `name` is required");
  if (request.image.empty()) fail(ErrorKind::InvalidInput, "run: `image` is required");
  std::string host = request.host;
  if (host.empty()) {
    uint64_t best = 0;
    for (auto& h : registry_.list()) {
      if (h.up && (host.empty() || h.memAvailableBytes > best)) {
        host = h.name;
        best = h.memAvailableBytes;
      }
    }
    if (host.empty()) fail(ErrorKind::Disconnected, "run: no host is up");
  }
  registry_.get(host);
  if (journal_.ownerIfExists(request.name)) {
    fail(ErrorKind::Conflict, "run: a container named `" + request.name + "` already exists");
  }
  for (auto& h : registry_.list()) {
    if (h.findContainer(request.name)) {
      fail(ErrorKind::Conflict, "run: a container named `" + request.name + "` already exists on " + h.name);
    }
  }
  auto reply = hostRequest(host, "runContainer", [&](proto::Request::Builder r) {
    auto run = r.initRunContainer();
    run.setName(request.name);
    run.setImage(request.image);
    auto args = run.initArgs(static_cast<unsigned>(request.args.size()));
    for (size_t i = 0; i < request.args.size(); ++i) args.set(static_cast<unsigned>(i), request.args[i]);
    auto env = run.initEnv(static_cast<unsigned>(request.env.size()));
    for (size_t i = 0; i < request.env.size(); ++i) env.set(static_cast<unsigned>(i), request.env[i]);
    run.setTcpEstablished(request.tcpEstablished);
    run.setHostUserns(request.hostUserns);
    run.setUser(request.user);
  });
  journal_.setOwner(request.name, host);
  json out = json::object();
  if (reply.get().isContainer()) out = containerFromProto(reply.get().getContainer()).toJson();
  out["host"] = host;
  try {
    auto list = hostRequest(host, "listContainers", [](proto::Request::Builder r) { r.setListContainers(); });
    registry_.recordContainers(host, containersFromProto(list.get().getContainers()));
  } catch (const std::exception& e) {
    logWarn(std::string("run: refreshing the container list: ") + e.what());
  }
  return out;
}

void Coordinator::removeContainer(const std::string& name, bool force) {
  {
    std::lock_guard lock(mutex_);
    checkNotBusyLocked(name);
  }
  std::string host = locate(name);
  hostRequest(host, "removeContainer", [&](proto::Request::Builder r) {
    auto remove = r.initRemoveContainer();
    remove.setName(name);
    remove.setForce(force);
  });
  journal_.removeOwner(name);
  try {
    auto list = hostRequest(host, "listContainers", [](proto::Request::Builder r) { r.setListContainers(); });
    registry_.recordContainers(host, containersFromProto(list.get().getContainers()));
  } catch (const std::exception& e) {
    logWarn(std::string("rm: refreshing the container list: ") + e.what());
  }
}

json Coordinator::stopContainer(const std::string& name) {
  {
    std::lock_guard lock(mutex_);
    checkNotBusyLocked(name);
  }
  std::string host = locate(name);
  auto reply = hostRequest(host, "stopContainer", [&](proto::Request::Builder r) { r.initStopContainer().setName(name); });
  json out = json::object();
  if (reply.get().isContainer()) out = containerFromProto(reply.get().getContainer()).toJson();
  out["host"] = host;
  return out;
}

std::string Coordinator::containerLogs(const std::string& name, uint32_t tail) {
  std::string host = locate(name);
  auto reply = hostRequest(host, "containerLogs", [&](proto::Request::Builder r) {
    auto logs = r.initContainerLogs();
    logs.setName(name);
    logs.setTail(tail);
  });
  if (!reply.get().isLogs()) fail(host + " answered containerLogs without logs");
  return reply.get().getLogs().cStr();
}

std::optional<std::string> Coordinator::resolveHost(const std::string& nameOrAddress) const {
  for (auto& h : registry_.list()) {
    if (h.name == nameOrAddress || (!h.dataAddress.empty() && h.dataAddress == nameOrAddress)) return h.name;
  }
  return std::nullopt;
}

// ---------------------------------------------------------------------------
// Migrations

void Coordinator::checkNotBusyLocked(const std::string& container) {
  for (auto& [id, m] : active_) {
    if (m->container() == container) {
      fail(ErrorKind::Conflict, "container `" + container + "` is being migrated (migration " + id + ")");
    }
  }
  for (auto& r : journal_.unfinished()) {
    // A committed migration only has the source's cleanup left; the container
    // itself is settled on its target.
    if (r.container == container && r.state != MigrationState::Committed) {
      fail(ErrorKind::Conflict, "container `" + container + "` has an unfinished migration " + r.id + " (" +
                                    std::string(stateName(r.state)) + ")");
    }
  }
}

std::shared_ptr<Migration> Coordinator::createMigrationLocked(const std::string& container, const std::string& source,
                                                              const std::string& target,
                                                              const MigrationOptions& options) {
  if (stopping_) fail(ErrorKind::Disconnected, "coordinator is shutting down");
  checkNotBusyLocked(container);
  MigrationRecord record;
  record.id = newMigrationId();
  record.container = container;
  record.source = source;
  record.target = target;
  record.options = options.toJson();
  record.createdAtMs = record.updatedAtMs = nowEpochMs();
  journal_.insert(record);
  auto migration = std::make_shared<Migration>(context_, record);
  active_[record.id] = migration;
  return migration;
}

std::string Coordinator::startMigration(const MigrationRequest& request) {
  if (request.container.empty()) fail(ErrorKind::InvalidInput, "migration: `container` is required");
  if (request.target.empty()) fail(ErrorKind::InvalidInput, "migration: `target` is required");
  registry_.get(request.target);
  std::string source = locate(request.container);
  if (source == request.target) {
    fail(ErrorKind::InvalidInput, "migration: `" + request.container + "` already runs on " + request.target);
  }
  std::shared_ptr<Migration> migration;
  {
    std::lock_guard lock(mutex_);
    migration = createMigrationLocked(request.container, source, request.target, request.options);
  }
  launch([this, migration] {
    migration->run();
    finished(migration->id());
  });
  return migration->id();
}

json Coordinator::migration(const std::string& id) {
  std::shared_ptr<Migration> active;
  {
    std::lock_guard lock(mutex_);
    auto it = active_.find(id);
    if (it != active_.end()) active = it->second;
  }
  if (active) return migrationToJson(active->record(), active->progress());
  return migrationToJson(journal_.get(id), std::nullopt);
}

json Coordinator::history(size_t limit) {
  json out = json::array();
  for (auto& r : journal_.history(limit)) {
    std::shared_ptr<Migration> active;
    {
      std::lock_guard lock(mutex_);
      auto it = active_.find(r.id);
      if (it != active_.end()) active = it->second;
    }
    out.push_back(active ? migrationToJson(active->record(), active->progress()) : migrationToJson(r, std::nullopt));
  }
  return out;
}

json Coordinator::cancelMigration(const std::string& id) {
  std::shared_ptr<Migration> active;
  {
    std::lock_guard lock(mutex_);
    auto it = active_.find(id);
    if (it != active_.end()) active = it->second;
  }
  if (!active) {
    auto record = journal_.get(id);
    fail(ErrorKind::Conflict, "migration " + id + " is " + std::string(stateName(record.state)) +
                                  (isFinal(record.state) ? "" : " and being recovered") + "; nothing to cancel");
  }
  if (!active->cancel()) {
    fail(ErrorKind::Conflict, "migration " + id + " is " + std::string(stateName(active->record().state)) +
                                  ": too late to cancel");
  }
  return migrationToJson(active->record(), active->progress());
}

std::shared_ptr<Migration> Coordinator::pausedMigration(const std::string& id, const char* verb) {
  {
    std::lock_guard lock(mutex_);
    auto it = active_.find(id);
    if (it != active_.end()) return it->second;
  }
  auto record = journal_.get(id);
  std::string state(stateName(record.state));
  if (record.state == MigrationState::Paused) {
    fail(ErrorKind::Conflict, "migration " + id + " is paused but not taken up by this coordinator yet (it does "
                                  "within " + std::to_string(options_.retryInterval.count()) + " ms); " + verb +
                                  " again then");
  }
  fail(ErrorKind::Conflict, "migration " + id + " is " + state + ", not paused: nothing to " + verb);
}

json Coordinator::recoverMigration(const std::string& id) {
  auto migration = pausedMigration(id, "recover");
  migration->recoverNow();
  return migrationToJson(migration->record(), migration->progress());
}

json Coordinator::abandonMigration(const std::string& id, KeepSide keep) {
  auto migration = pausedMigration(id, "abandon");
  migration->abandonKeeping(keep);
  return migrationToJson(migration->record(), migration->progress());
}

EvacuationResult Coordinator::evacuate(const EvacuationRequest& request) {
  if (request.host.empty()) fail(ErrorKind::InvalidInput, "evacuation: `host` is required");
  auto source = registry_.get(request.host);
  if (!source.up) {
    fail(ErrorKind::Disconnected, "evacuation: host `" + request.host + "` is down; a live migration needs it up");
  }
  auto list = hostRequest(request.host, "listContainers", [](proto::Request::Builder r) { r.setListContainers(); });
  auto containers = containersFromProto(list.get().getContainers());
  registry_.recordContainers(request.host, containers);

  std::vector<EvacuationCandidate> candidates;
  if (request.targets.empty()) {
    for (auto& h : registry_.list()) candidates.push_back({h.name, h.memAvailableBytes, h.up});
  } else {
    for (auto& name : request.targets) {
      auto h = registry_.get(name);
      candidates.push_back({h.name, h.memAvailableBytes, h.up});
    }
  }

  EvacuationResult result;
  std::vector<EvacuationItem> items;
  {
    std::lock_guard lock(mutex_);
    for (auto& c : containers) {
      if (c.state != "running") continue;
      // A name the journal gives to another host is not this host's to move,
      // whatever it reports (see locate()).
      if (auto owner = journal_.ownerIfExists(c.name); owner && *owner != request.host) {
        result.unplaced.emplace_back(c.name, "owned by " + *owner + " (journal), not by " + request.host);
        continue;
      }
      try {
        checkNotBusyLocked(c.name);
        items.push_back({c.name, 0});
      } catch (const Error& e) {
        result.unplaced.emplace_back(c.name, e.what());
      }
    }
  }
  auto plan = planEvacuation(request.host, items, candidates);
  result.unplaced.insert(result.unplaced.end(), plan.unplaced.begin(), plan.unplaced.end());

  auto queue = std::make_shared<EvacuationQueue>();
  {
    std::lock_guard lock(mutex_);
    for (auto& move : plan.moves) {
      MigrationOptions options;
      options.postCopy = request.postCopy;
      auto migration = createMigrationLocked(move.container, request.host, move.target, options);
      queue->waiting.push_back(migration);
      result.migrationIds.push_back(migration->id());
    }
  }
  int parallel = request.parallel > 0 ? request.parallel : options_.defaultParallel;
  int workers = std::min<int>(parallel, static_cast<int>(queue->waiting.size()));
  logInfo("coordinator: evacuating " + request.host + ": " + std::to_string(plan.moves.size()) + " migrations, " +
          std::to_string(workers) + " at a time, " + std::to_string(result.unplaced.size()) + " left in place");
  for (int i = 0; i < workers; ++i) {
    launch([this, queue] {
      for (;;) {
        std::shared_ptr<Migration> next;
        {
          std::lock_guard lock(queue->mutex);
          if (queue->waiting.empty()) return;
          next = queue->waiting.front();
          queue->waiting.pop_front();
        }
        bool stopping;
        {
          std::lock_guard lock(mutex_);
          stopping = stopping_;
        }
        // At shutdown the queued ones stay `pending`; the next start fails them.
        if (!stopping) next->run();
        finished(next->id());
      }
    });
  }
  return result;
}

}  // namespace migrate
