// The target's receivers: the live ones by migration id, why the last few
// ended (for a restore that asks after its receiver), and the ended ones not
// yet destroyed.
//
// A receiver that fails or times out ends itself from one of its threads, so
// it cannot be destroyed there (its destructor joins those threads). Ended
// receivers wait in `retired_` until reap() finds them without threads and
// without another holder (a restore in progress keeps a reference), and only
// then are destroyed, on the reaping thread.
#pragma once

#include <cstddef>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "agent/receiver.h"

namespace migrate {

class ReceiverSet {
 public:
  explicit ReceiverSet(std::string hostName) : hostName_(std::move(hostName)) {}
  ~ReceiverSet();  // stops every receiver, waits for its threads, destroys it
  ReceiverSet(const ReceiverSet&) = delete;
  ReceiverSet& operator=(const ReceiverSet&) = delete;

  // A new live receiver for `spec`, unless it clashes with a live one: the
  // same migration, the same container name, or an overlapping user
  // namespace mapping (Conflict, naming the other). Failed once stopping.
  std::shared_ptr<Receiver> create(Agent& agent, ReceiverSpec spec, ReportProgress report);

  // The live receiver of `migrationId`; Failed with the reason if it ended
  // lately, NotFound if this agent never had it (or forgot it).
  std::shared_ptr<Receiver> find(const std::string& migrationId);
  std::shared_ptr<Receiver> findIfLive(const std::string& migrationId);
  size_t liveCount();

  // Destroys the ended receivers nobody uses any more. Never waits.
  void reap();
  // Tells every receiver to stop; none is created after this.
  void stopAll();

 private:
  struct Ended {
    std::string migrationId;
    std::string reason;
  };
  void end(Receiver& receiver, const std::string& failure);

  const std::string hostName_;
  std::mutex mutex_;  // guards the four below
  bool stopping_ = false;
  std::map<std::string, std::shared_ptr<Receiver>> live_;
  std::vector<std::shared_ptr<Receiver>> retired_;
  std::deque<Ended> ended_;  // the last few that failed
};

}  // namespace migrate
