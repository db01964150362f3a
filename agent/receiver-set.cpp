#include "agent/receiver-set.h"

#include "common/error.h"
#include "common/log.h"

namespace migrate {

namespace {

// Failed receivers remembered for a restore that asks after them.
constexpr size_t kEndedKept = 32;
// How long shutdown waits for a stopped receiver's threads before joining
// them regardless (an import in progress cleans up first).
constexpr auto kStopWait = std::chrono::seconds(30);

}  // namespace

ReceiverSet::~ReceiverSet() {
  std::vector<std::shared_ptr<Receiver>> all;
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
    for (auto& [id, r] : live_) all.push_back(r);
    all.insert(all.end(), retired_.begin(), retired_.end());
  }
  // Unlocked: their threads end themselves through end(), which locks.
  for (auto& r : all) {
    if (!r->stop(kStopWait)) logWarn("migration " + r->spec().migrationId + ": receiver still stopping");
  }
  {
    std::lock_guard lock(mutex_);
    live_.clear();
    retired_.clear();
  }
  all.clear();  // the last references: each destructor joins its threads
}

std::shared_ptr<Receiver> ReceiverSet::create(Agent& agent, ReceiverSpec spec, ReportProgress report) {
  std::lock_guard lock(mutex_);
  if (stopping_) fail(ErrorKind::Failed, "the agent is stopping");
  // A failed or timed-out receiver is gone already; these are live ones.
  if (live_.count(spec.migrationId)) {
    fail(ErrorKind::Conflict, "migration " + spec.migrationId + " already has a receiver waiting or receiving");
  }
  for (auto& [id, other] : live_) {
    if (other->spec().containerName == spec.containerName) {
      fail(ErrorKind::Conflict, "`" + spec.containerName + "` is being received already, by migration " + id);
    }
    // Not a container here yet, so Agent::checkIdMappingAvailable cannot see it.
    auto& theirs = other->spec().idMapping;
    if (spec.idMapping && theirs && spec.idMapping->overlaps(*theirs)) {
      refuseOverlap(*spec.idMapping, spec.containerName, *theirs, other->spec().containerName,
                    ", being received by migration " + id);
    }
  }
  std::string id = spec.migrationId;
  auto r = std::make_shared<Receiver>(agent, std::move(spec), std::move(report),
                                      [this](Receiver& ended, const std::string& failure) { end(ended, failure); });
  live_[id] = r;
  return r;
}

void ReceiverSet::end(Receiver& receiver, const std::string& failure) {
  std::lock_guard lock(mutex_);
  auto it = live_.find(receiver.spec().migrationId);
  if (it == live_.end() || it->second.get() != &receiver) return;
  retired_.push_back(std::move(it->second));
  live_.erase(it);
  if (failure.empty()) return;
  ended_.push_back(Ended{receiver.spec().migrationId, failure});
  if (ended_.size() > kEndedKept) ended_.pop_front();
}

std::shared_ptr<Receiver> ReceiverSet::findIfLive(const std::string& migrationId) {
  std::lock_guard lock(mutex_);
  auto it = live_.find(migrationId);
  return it == live_.end() ? nullptr : it->second;
}

std::shared_ptr<Receiver> ReceiverSet::find(const std::string& migrationId) {
  if (auto r = findIfLive(migrationId)) return r;
  std::lock_guard lock(mutex_);
  for (auto ended = ended_.rbegin(); ended != ended_.rend(); ++ended) {
    if (ended->migrationId == migrationId) {
      fail(ErrorKind::Failed, "the receiver for migration " + migrationId + " on " + hostName_ +
                                  " has ended: " + ended->reason);
    }
  }
  fail(ErrorKind::NotFound, "no receiver for migration " + migrationId + " on " + hostName_);
}

size_t ReceiverSet::liveCount() {
  std::lock_guard lock(mutex_);
  return live_.size();
}

void ReceiverSet::reap() {
  std::vector<std::shared_ptr<Receiver>> unused;
  {
    std::lock_guard lock(mutex_);
    for (auto it = retired_.begin(); it != retired_.end();) {
      // use_count is exact here: a new holder gets its copy under this lock.
      if (it->use_count() == 1 && (*it)->finished()) {
        unused.push_back(std::move(*it));
        it = retired_.erase(it);
      } else {
        ++it;
      }
    }
  }
  // Outside the lock; their threads have returned, so the joins are immediate.
  unused.clear();
}

void ReceiverSet::stopAll() {
  std::vector<std::shared_ptr<Receiver>> all;
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
    for (auto& [id, r] : live_) all.push_back(r);
  }
  for (auto& r : all) r->stop(std::chrono::milliseconds(0));
}

}  // namespace migrate
