#include "agent/page-relay-handle.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>

#include "agent/container-cgroup.h"
#include "common/error.h"
#include "common/files.h"
#include "common/log.h"
#include "common/subprocess.h"
#include "common/syscall.h"
#include "common/syscalls.h"

namespace migrate {

namespace fs = std::filesystem;

namespace {

// Is `pid` the relay of `dir` (not a process that took a dead relay's pid)?
bool isRelayOf(pid_t pid, const fs::path& dir) {
  auto cmdline = readFileIfExists(fs::path("/proc") / std::to_string(pid) / "cmdline");
  if (!cmdline) return false;
  return cmdline->find(std::string("page-relay") + '\0' + dir.string()) != std::string::npos;
}

}  // namespace

PageRelayHandle::PageRelayHandle(fs::path dir, pid_t pid, bool adopted)
    : dir_(std::move(dir)), pid_(pid), adopted_(adopted) {
  int fd = sys::pidfdOpen(pid);
  if (fd >= 0 && isRelayOf(pid, dir_)) pidfd_ = std::make_shared<Fd>(fd);
  else if (fd >= 0) ::close(fd);
}

PageRelayHandle PageRelayHandle::start(const fs::path& stateDir, const PageRelaySpec& spec, int listenFd) {
  fs::path dir = relayDirectory(stateDir, spec.migrationId);
  removeTree(dir);
  fs::create_directories(dir);
  fs::permissions(dir, fs::perms::owner_all);
  writeRelaySpec(dir, spec);
  Fd log(SYSCALL(::open((dir / "relay.log").c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600), "open",
                 (dir / "relay.log").string()));
  auto options = SubprocessOptions::of({"/proc/self/exe", "page-relay", dir.string()});
  options.stdoutFd = log.get();
  options.stderrFd = log.get();
  if (listenFd >= 0) options.passFds = {listenFd};
  options.newSession = true;  // not in our process group: it outlives us
  Subprocess relay(options);
  pid_t pid = relay.pid();
  relay.detach();  // ours to reap (reap()), never to kill on the way out
  writeFileAtomic(dir / "pid", std::to_string(pid), 0600);
  return PageRelayHandle(dir, pid, false);
}

std::optional<PageRelayHandle> PageRelayHandle::open(const fs::path& stateDir, const std::string& migrationId) {
  fs::path dir = relayDirectory(stateDir, migrationId);
  auto pid = readFileIfExists(dir / "pid");
  if (!pid) return std::nullopt;
  return PageRelayHandle(dir, static_cast<pid_t>(std::stol(*pid)), true);
}

bool PageRelayHandle::alive() const {
  if (!pidfd_) return false;
  pollfd p{pidfd_->get(), POLLIN, 0};
  return ::poll(&p, 1, 0) == 0;  // a pidfd turns readable when the process exits
}

PageRelayStatus PageRelayHandle::status() const {
  bool live = alive();
  std::optional<PageRelayStatus> s;
  try {
    s = readRelayStatus(dir_);
  } catch (const std::exception& e) {
    logWarn(std::string("page relay: ") + e.what());
  }
  PageRelayStatus out = s.value_or(PageRelayStatus{});
  out.pid = pid_;
  if (!live && out.state != RelayState::Done && out.state != RelayState::Failed) {
    out.state = RelayState::Failed;
    out.error = "the page relay (pid " + std::to_string(pid_) + ") died" +
                (out.error.empty() ? "" : " after: " + out.error) + " (" + (dir_ / "relay.log").string() + ")";
  }
  return out;
}

void PageRelayHandle::rekey(const std::vector<uint8_t>& psk) const {
  writeRelayKey(dir_, psk);
  if (!alive()) fail(ErrorKind::Failed, "the page relay (pid " + std::to_string(pid_) + ") is gone");
  SYSCALL(sys::pidfdSendSignal(pidfd_->get(), SIGUSR1), "pidfd_send_signal", "page relay");
}

void PageRelayHandle::stop(std::chrono::milliseconds timeout) const {
  if (!alive()) {
    reap();
    return;
  }
  sys::pidfdSendSignal(pidfd_->get(), SIGTERM);
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (alive() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (alive()) {
    logWarn("page relay (pid " + std::to_string(pid_) + ") ignored SIGTERM; killing it");
    sys::pidfdSendSignal(pidfd_->get(), SIGKILL);
  }
  reap();
}

Fd PageRelayHandle::copyFd(int number) const {
  if (!pidfd_) fail(ErrorKind::Failed, "the page relay (pid " + std::to_string(pid_) + ") is gone");
  return Fd(SYSCALL(sys::pidfdGetfd(pidfd_->get(), number), "pidfd_getfd", "page relay fd " + std::to_string(number)));
}

void PageRelayHandle::reap() const {
  int status;
  while (::waitpid(pid_, &status, WNOHANG) < 0 && errno == EINTR) {
  }
}

void PageRelayHandle::remove() const {
  // The relay may still be on its way out, and a lazy-pages it left behind
  // is in its cgroup: both go with it.
  try {
    std::string cgroup = readRelaySpec(dir_).relayCgroup;
    if (!removeCgroup(cgroup, std::chrono::seconds(2))) {
      logWarn("page relay: cgroup " + cgroup + " still has processes; left in place");
    }
  } catch (const std::exception& e) {
    logWarn(std::string("page relay: ") + e.what());
  }
  reap();
  removeTree(dir_);
}

}  // namespace migrate
