// A mount this agent made, with one owner that takes it down: lazily
// (umount2 MNT_DETACH, so a process still inside does not make the cleanup
// fail), once, with the result checked.
#pragma once

#include <filesystem>

namespace migrate {

namespace fs = std::filesystem;

// Detaches the mount at `point`. Throws with errno on failure; when
// `notMounted` is Ignore, EINVAL (nothing mounted there) and ENOENT (gone)
// are not failures.
enum class NotMounted { Fail, Ignore };
void unmountLazily(const fs::path& point, NotMounted notMounted = NotMounted::Fail);

class MountGuard {
 public:
  MountGuard() = default;  // owns nothing
  // Takes over the mount just made at `point`.
  explicit MountGuard(fs::path point) : point_(std::move(point)) {}
  MountGuard(MountGuard&& other) noexcept;
  MountGuard& operator=(MountGuard&& other) noexcept;
  MountGuard(const MountGuard&) = delete;
  MountGuard& operator=(const MountGuard&) = delete;
  // Unmounts unless released; a failure is logged (a destructor cannot throw).
  ~MountGuard();

  explicit operator bool() const { return !point_.empty(); }
  const fs::path& point() const { return point_; }
  // Unmounts now and reports a failure; the guard owns nothing afterwards.
  void unmount();
  // The mount stays (it moved with its parent, or someone else owns it now).
  void release() { point_.clear(); }

 private:
  void unmountLogged() noexcept;

  fs::path point_;
};

}  // namespace migrate
