#include "agent/storage.h"

#include <sys/mount.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <vector>
#include <sstream>

#include "agent/idmapped-mount.h"
#include "agent/mount-guard.h"
#include "common/error.h"
#include "common/files.h"
#include "common/syscall.h"

namespace migrate {

namespace {

// /proc/self/mountinfo field 5 is the mount point, with space, tab, newline
// and backslash escaped as octal (\040).
std::vector<std::string> mountPoints() {
  std::vector<std::string> points;
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string id, parent, dev, root, escaped, point;
    fields >> id >> parent >> dev >> root >> escaped;
    for (size_t i = 0; i < escaped.size(); ++i) {
      if (escaped[i] == '\\' && i + 3 < escaped.size()) {
        point += static_cast<char>(std::stoi(escaped.substr(i + 1, 3), nullptr, 8));
        i += 3;
      } else {
        point += escaped[i];
      }
    }
    points.push_back(point);
  }
  return points;
}

}  // namespace

bool isMountPoint(const fs::path& path) {
  std::string target = fs::absolute(path).lexically_normal().string();
  for (auto& point : mountPoints()) {
    if (point == target) return true;
  }
  return false;
}

void unmountAllUnder(const fs::path& dir) {
  std::string top = fs::absolute(dir).lexically_normal().string();
  std::vector<std::string> below;
  for (auto& point : mountPoints()) {
    if (point == top || point.rfind(top + "/", 0) == 0) below.push_back(point);
  }
  // Longest first: children before their parents.
  std::sort(below.begin(), below.end(), [](auto& a, auto& b) { return a.size() > b.size(); });
  for (auto& point : below) {
    unmountLazily(point, NotMounted::Ignore);
  }
}

void makeSearchable(const fs::path& path, const fs::path& ownedTop) {
  auto top = fs::absolute(ownedTop).lexically_normal();
  for (auto dir = fs::absolute(path).lexically_normal(); ; dir = dir.parent_path()) {
    struct stat st;
    SYSCALL(::stat(dir.c_str(), &st), "stat", dir.string());
    bool owned = dir == top || dir.string().rfind(top.string() + "/", 0) == 0;
    if (!(st.st_mode & S_IXOTH)) {
      if (!owned) {
        char mode[8];
        std::snprintf(mode, sizeof mode, "%04o", st.st_mode & 07777);
        fail(ErrorKind::InvalidInput, "`" + dir.string() + "` (mode " + mode +
                                          ") is not searchable by other users: a container in a user namespace "
                                          "cannot reach its rootfs below it (chmod o+x, or run it with --userns=host)");
      }
      SYSCALL(::chmod(dir.c_str(), (st.st_mode & 07777) | S_IXOTH), "chmod o+x", dir.string());
    }
    if (dir == dir.root_path()) break;
  }
}

void mountOverlay(const OverlayPaths& paths) {
  ErrorContext context("overlay mount at " + paths.merged.string());
  for (auto& dir : {paths.upper, paths.work, paths.merged}) fs::create_directories(dir);
  if (isMountPoint(paths.merged)) return;
  if (!fs::is_directory(paths.lower)) fail(ErrorKind::NotFound, "image rootfs " + paths.lower.string() + " is missing");
  fs::path lower = paths.lower;
  // Unmounted again if the overlay cannot be stacked on it.
  MountGuard mappedLower;
  if (paths.idMapping) {
    mountIdmapped(paths.lower, paths.mappedLower, *paths.idMapping);
    mappedLower = MountGuard(paths.mappedLower);
    lower = paths.mappedLower;
    // The merged root takes the upper root's owner: the container's root,
    // else it could not create a file in its own `/`.
    struct stat st;
    SYSCALL(::lstat(paths.upper.c_str(), &st), "stat", paths.upper.string());
    if (st.st_uid < paths.idMapping->hostId || st.st_uid >= paths.idMapping->end()) {
      SYSCALL(::lchown(paths.upper.c_str(), paths.idMapping->hostId, paths.idMapping->hostId), "chown",
              paths.upper.string());
    }
  }
  std::string options = "lowerdir=" + lower.string() + ",upperdir=" + paths.upper.string() +
                        ",workdir=" + paths.work.string();
  SYSCALL(::mount("overlay", paths.merged.c_str(), "overlay", 0, options.c_str()), "mount overlay", options);
  mappedLower.release();  // unmountOverlay() takes both down
}

void mountScratchTmpfs(const fs::path& dir, std::optional<TmpfsBounds> bounds) {
  fs::create_directories(dir);
  if (isMountPoint(dir)) return;
  std::string options = "mode=0700";
  if (bounds) {
    options += ",size=" + std::to_string(bounds->bytes) + ",nr_inodes=" + std::to_string(bounds->inodes);
  }
  SYSCALL(::mount("tmpfs", dir.c_str(), "tmpfs", MS_NOSUID | MS_NODEV, options.c_str()), "mount tmpfs", dir.string(),
          options);
}

void releaseDirectory(const fs::path& dir) {
  if (isMountPoint(dir)) unmountLazily(dir);
  std::error_code ec;
  fs::remove_all(dir, ec);
  if (ec) fail("remove " + dir.string() + ": " + ec.message());
}

void unmountOverlay(const OverlayPaths& paths) {
  for (auto& point : {paths.merged, paths.mappedLower}) {
    if (point.empty() || !isMountPoint(point)) continue;
    unmountLazily(point);
  }
}

}  // namespace migrate
