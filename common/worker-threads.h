// A set of worker threads, one per task that may take long (the agent
// daemon's requests, the coordinator's migrations), owned here. A finished
// worker is joined by the next reap; a running one is never waited for there,
// so a control loop that reaps (and with it the agent's heartbeats) never
// blocks behind a long transfer. The destructor joins the rest.
#pragma once

#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

namespace migrate {

class WorkerThreads {
 public:
  WorkerThreads() = default;
  WorkerThreads(const WorkerThreads&) = delete;
  WorkerThreads& operator=(const WorkerThreads&) = delete;
  ~WorkerThreads() { joinAll(); }

  // An exception escaping `work` is logged with `what`, not rethrown.
  void start(std::function<void()> work, std::string what = "worker");
  // Joins the workers that returned; returns how many still run.
  size_t reapFinished();
  void joinAll();

 private:
  struct Worker {
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> done = std::make_shared<std::atomic<bool>>(false);
  };
  std::mutex mutex_;
  std::list<Worker> workers_;
};

}  // namespace migrate
