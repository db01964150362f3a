#include "common/worker-threads.h"

#include <catch2/catch.hpp>
#include <chrono>
#include <condition_variable>

using namespace migrate;

TEST_CASE("reaping joins the finished workers at once and leaves a long one running") {
  WorkerThreads workers;
  std::mutex mutex;
  std::condition_variable cv;
  bool release = false;
  std::atomic<int> finished{0};
  workers.start([&] {
    std::unique_lock lock(mutex);
    cv.wait(lock, [&] { return release; });
  });
  for (int i = 0; i < 100; ++i) workers.start([&] { ++finished; });
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (finished < 100 && std::chrono::steady_clock::now() < deadline) std::this_thread::yield();
  REQUIRE(finished == 100);
  // The 100 short ones are joined; the blocked one is not waited for.
  size_t running = 100;
  while (running > 1 && std::chrono::steady_clock::now() < deadline) running = workers.reapFinished();
  CHECK(running == 1);
  {
    std::lock_guard lock(mutex);
    release = true;
  }
  cv.notify_all();
  workers.joinAll();
  CHECK(workers.reapFinished() == 0);
}
