// Directories the agent is done with, deleted off the caller's path: a
// container's directory goes into `<state>/trash/` by one rename (so it is
// gone from every listing at once) and a worker thread deletes it there.
// A container whose writable layer holds 20000 files took 2.6-3.3 s to
// delete on this machine's ext4, inside the agent's lock and on the
// migration's commit (docs/benchmarks.md). Whatever a killed agent left in
// the trash is deleted by the next one that holds the trash's lock (a
// flock on the directory: the daemon, not a one-shot `migrate-agent ps`
// beside it, which deletes only what it discarded itself).
#pragma once

#include <condition_variable>
#include <deque>
#include <filesystem>
#include <mutex>
#include <thread>

#include "common/fd.h"

namespace migrate {

class Trash {
 public:
  explicit Trash(std::filesystem::path dir);
  // Deletes what is still queued, then returns.
  ~Trash();
  Trash(const Trash&) = delete;
  Trash& operator=(const Trash&) = delete;

  // Moves `path` into the trash and queues it; deletes it here if it cannot
  // be moved (on another filesystem).
  void discard(const std::filesystem::path& path);

 private:
  void run();

  const std::filesystem::path dir_;
  Fd lock_;  // the directory, flocked when this one sweeps what others left
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::filesystem::path> queue_;
  bool stopping_ = false;
  std::thread worker_;  // last: started once the rest is ready
};

}  // namespace migrate
