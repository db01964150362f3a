// The agent's side of a page relay process (page-relay.h): start it, read
// what it says, give it a fresh key, stop it. Everything goes through the
// relay's directory and its pid, so a restarted agent adopts a relay its
// predecessor started with nothing but the migration id (open()).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "agent/page-relay-files.h"
#include "common/fd.h"

namespace migrate {

class PageRelayHandle {
 public:
  // Writes the spec and starts `migrate-agent page-relay DIR` in a session
  // of its own (it outlives us). `listenFd` (target) becomes its fd 3.
  static PageRelayHandle start(const std::filesystem::path& stateDir, const PageRelaySpec& spec, int listenFd = -1);
  // The relay of this migration here, if one was started (alive or not).
  static std::optional<PageRelayHandle> open(const std::filesystem::path& stateDir, const std::string& migrationId);

  const std::filesystem::path& dir() const { return dir_; }
  pid_t pid() const { return pid_; }
  bool adopted() const { return adopted_; }

  // Its last status; a relay that died without saying `done` or `failed`
  // reads as failed ("the page relay (pid N) died").
  PageRelayStatus status() const;
  bool alive() const;

  // Waits until `ready(status)` or the relay is over; false on timeout.
  template <typename Ready>
  bool waitFor(std::chrono::milliseconds timeout, Ready ready) const;

  void rekey(const std::vector<uint8_t>& psk) const;
  // SIGTERM, then waits up to `timeout` for it to exit (SIGKILL after).
  void stop(std::chrono::milliseconds timeout = std::chrono::seconds(10)) const;
  // A copy of one of its fds (pidfd_getfd), e.g. its CRIU socket.
  Fd copyFd(int number) const;
  // Reaps it if it is our child and has exited; harmless otherwise.
  void reap() const;
  // Removes its directory (only once it is over).
  void remove() const;

 private:
  PageRelayHandle(std::filesystem::path dir, pid_t pid, bool adopted);

  std::filesystem::path dir_;
  pid_t pid_ = 0;
  bool adopted_ = false;
  std::shared_ptr<Fd> pidfd_;
};

template <typename Ready>
bool PageRelayHandle::waitFor(std::chrono::milliseconds timeout, Ready ready) const {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    auto s = status();
    if (ready(s) || s.state == RelayState::Done || s.state == RelayState::Failed) return ready(s);
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

}  // namespace migrate
