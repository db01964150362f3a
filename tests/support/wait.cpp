#include "tests/support/wait.h"

#include <thread>

namespace migrate::test {

using Clock = std::chrono::steady_clock;

bool waitUntil(const std::function<bool()>& condition, std::chrono::milliseconds timeout,
               std::chrono::milliseconds interval) {
  auto deadline = Clock::now() + timeout;
  for (;;) {
    if (condition()) return true;
    if (Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(interval);
  }
}

bool holdsFor(const std::function<bool()>& condition, std::chrono::milliseconds duration,
              std::chrono::milliseconds interval) {
  auto end = Clock::now() + duration;
  for (;;) {
    if (!condition()) return false;
    if (Clock::now() >= end) return true;
    std::this_thread::sleep_for(interval);
  }
}

}  // namespace migrate::test
