#include "agent/mount-guard.h"

#include <sys/mount.h>

#include <cerrno>
#include <utility>

#include "common/error.h"
#include "common/log.h"

namespace migrate {

void unmountLazily(const fs::path& point, NotMounted notMounted) {
  for (;;) {
    if (::umount2(point.c_str(), MNT_DETACH) == 0) return;
    if (errno == EINTR) continue;
    if (notMounted == NotMounted::Ignore && (errno == EINVAL || errno == ENOENT)) return;
    failErrno(errno, "umount " + point.string());
  }
}

MountGuard::MountGuard(MountGuard&& other) noexcept : point_(std::exchange(other.point_, {})) {}

MountGuard& MountGuard::operator=(MountGuard&& other) noexcept {
  if (this != &other) {
    unmountLogged();
    point_ = std::exchange(other.point_, {});
  }
  return *this;
}

MountGuard::~MountGuard() { unmountLogged(); }

void MountGuard::unmount() {
  if (point_.empty()) return;
  auto point = std::exchange(point_, {});
  unmountLazily(point);
}

void MountGuard::unmountLogged() noexcept {
  try {
    unmount();
  } catch (const std::exception& e) {
    logWarn(std::string("mount guard: ") + e.what());
  }
}

}  // namespace migrate
