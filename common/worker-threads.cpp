#include "common/worker-threads.h"

#include <atomic>
#include <vector>

#include "common/log.h"

namespace migrate {

void WorkerThreads::start(std::function<void()> work, std::string what) {
  std::lock_guard lock(mutex_);
  Worker& w = workers_.emplace_back();
  // The flag is the worker's own copy: the list may drop the entry only after a join.
  w.thread = std::thread([work = std::move(work), what = std::move(what), done = w.done] {
    try {
      work();
    } catch (const std::exception& e) {
      logError(what + ": " + e.what());
    }
    done->store(true);
  });
}

size_t WorkerThreads::reapFinished() {
  std::list<Worker> finished;
  size_t running = 0;
  {
    std::lock_guard lock(mutex_);
    for (auto it = workers_.begin(); it != workers_.end();) {
      auto next = std::next(it);
      if (it->done->load()) {
        finished.splice(finished.end(), workers_, it);
      } else {
        ++running;
      }
      it = next;
    }
  }
  // Outside the lock: they returned, so each join is immediate.
  for (auto& w : finished) w.thread.join();
  return running;
}

void WorkerThreads::joinAll() {
  std::list<Worker> all;
  {
    std::lock_guard lock(mutex_);
    all.swap(workers_);
  }
  for (auto& w : all) {
    if (w.thread.joinable()) w.thread.join();
  }
}

}  // namespace migrate
