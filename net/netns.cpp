#include "net/netns.h"

#include <fcntl.h>
#include <linux/magic.h>
#include <net/if.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <cstring>
#include <exception>
#include <thread>

#include "common/error.h"
#include "common/fd.h"
#include "common/log.h"
#include "common/syscall.h"

namespace migrate {

namespace {

// Runs `fn` on a fresh thread and rethrows its exception here: namespace
// changes made with unshare/setns stay on that thread.
void onFreshThread(const std::function<void()>& fn) {
  std::exception_ptr error;
  std::thread worker([&]() {
    try {
      fn();
    } catch (...) {
      error = std::current_exception();
    }
  });
  worker.join();
  if (error) std::rethrow_exception(error);
}

void bringLoopbackUp() {
  Fd sock(SYSCALL(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0), "socket", "(loopback)"));
  ifreq req{};
  std::strncpy(req.ifr_name, "lo", IFNAMSIZ - 1);
  SYSCALL(::ioctl(sock.get(), SIOCGIFFLAGS, &req), "ioctl(SIOCGIFFLAGS, lo)");
  req.ifr_flags = static_cast<short>(req.ifr_flags | IFF_UP);
  SYSCALL(::ioctl(sock.get(), SIOCSIFFLAGS, &req), "ioctl(SIOCSIFFLAGS, lo)");
}

bool isNsfs(const fs::path& path) {
  struct statfs st {};
  if (::statfs(path.c_str(), &st) < 0) return false;
  return static_cast<unsigned long>(st.f_type) == NSFS_MAGIC;
}

}  // namespace

void createNetns(const fs::path& path) {
  ErrorContext context("netns: create `" + path.string() + "`");
  int fd = ::open(path.c_str(), O_RDONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0444);
  if (fd < 0 && errno == EEXIST) fail(ErrorKind::Conflict, "the file already exists");
  if (fd < 0) failErrno(errno, "open");
  ::close(fd);
  try {
    onFreshThread([&]() {
      ErrorContext threadContext("netns: create `" + path.string() + "`");  // Frames are per thread.
      SYSCALL(::unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)");
      bringLoopbackUp();
      SYSCALL(::mount("/proc/thread-self/ns/net", path.c_str(), "none", MS_BIND, nullptr),
              "mount(bind /proc/thread-self/ns/net)");
    });
  } catch (...) {
    ::umount2(path.c_str(), MNT_DETACH);
    ::unlink(path.c_str());
    throw;
  }
}

void pinNetns(const fs::path& source, const fs::path& path) {
  ErrorContext context("netns: pin " + source.string() + " at `" + path.string() + "`");
  int fd = ::open(path.c_str(), O_RDONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0444);
  if (fd < 0 && errno == EEXIST) fail(ErrorKind::Conflict, "the file already exists");
  if (fd < 0) failErrno(errno, "open");
  ::close(fd);
  try {
    SYSCALL(::mount(source.c_str(), path.c_str(), "none", MS_BIND, nullptr), "mount(bind)");
    runInNetns(path, bringLoopbackUp);
  } catch (...) {
    ::umount2(path.c_str(), MNT_DETACH);
    ::unlink(path.c_str());
    throw;
  }
}

void removeNetns(const fs::path& path) {
  // A netns file can carry more than one bind mount (created twice by hand);
  // peel them all so the unlink succeeds.
  for (int i = 0; i < 8 && isNsfs(path); ++i) {
    if (::umount2(path.c_str(), MNT_DETACH) < 0 && errno != EINVAL && errno != ENOENT) {
      failErrno(errno, "netns: umount2(" + path.string() + ")");
    }
  }
  if (::unlink(path.c_str()) < 0 && errno != ENOENT) {
    failErrno(errno, "netns: unlink(" + path.string() + ")");
  }
}

bool netnsExists(const fs::path& path) {
  return isNsfs(path);
}

void runInNetns(const fs::path& path, const std::function<void()>& fn) {
  Fd ns(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!ns) failErrno(errno, "netns: open(" + path.string() + ")");
  if (!isNsfs(path)) fail(ErrorKind::NotFound, "netns: `" + path.string() + "` is not a network namespace");
  onFreshThread([&]() {
    SYSCALL(::setns(ns.get(), CLONE_NEWNET), "netns: setns", path.string());
    fn();
  });
}

std::vector<std::string> netnsCommandPrefix(const fs::path& path) {
  return {"nsenter", "--net=" + path.string(), "--"};
}

NetnsGuard::NetnsGuard(fs::path path) : path_(std::move(path)) {
  createNetns(path_);
}

NetnsGuard::NetnsGuard(NetnsGuard&& other) noexcept : path_(std::exchange(other.path_, {})) {}

NetnsGuard::~NetnsGuard() {
  if (path_.empty()) return;
  try {
    removeNetns(path_);
  } catch (const std::exception& e) {
    logWarn(e.what());
  }
}

fs::path NetnsGuard::release() {
  return std::exchange(path_, {});
}

}  // namespace migrate
