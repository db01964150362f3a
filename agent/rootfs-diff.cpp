#include "agent/rootfs-diff.h"

#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/syscall.h"
#include "common/syscalls.h"

namespace migrate {

namespace {

// Longer paths cannot be created by the kernel anyway; refusing early keeps
// hostile input from making us split megabyte-long names.
constexpr size_t kMaxPathLength = 4096;

int openat2Beneath(int dirFd, const std::string& path, uint64_t flags) {
  struct open_how how = {};
  how.flags = flags | O_CLOEXEC;
  how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
  for (;;) {
    int fd = sys::openat2(dirFd, path.c_str(), &how);
    if (fd >= 0 || errno != EINTR) return fd;
  }
}

}  // namespace

bool isWhiteout(const struct stat& st) { return S_ISCHR(st.st_mode) && st.st_rdev == makedev(0, 0); }

void shiftFileCapabilityRoot(std::vector<char>& value, const std::function<std::optional<uint32_t>(uint32_t)>& shift) {
  // struct vfs_ns_cap_data: magic_etc, two {permitted, inheritable} words, rootid; little endian.
  constexpr uint32_t kRevisionMask = 0xff000000, kRevision3 = 0x03000000;
  constexpr size_t kV3Bytes = 24, kRootIdAt = 20;
  auto word = [&](size_t at) {
    uint32_t w = 0;
    for (int i = 3; i >= 0; --i) w = (w << 8) | static_cast<unsigned char>(value[at + i]);
    return w;
  };
  if (value.size() != kV3Bytes || (word(0) & kRevisionMask) != kRevision3) {
    fail(ErrorKind::InvalidInput, "file capability of a container in a user namespace is not version 3 (names no "
                                  "namespace root: it would hold in the host's)");
  }
  auto shifted = shift(word(kRootIdAt));
  if (!shifted) fail(ErrorKind::InvalidInput, "file capability root id " + std::to_string(word(kRootIdAt)) + " is outside the container's ids");
  for (int i = 0; i < 4; ++i) value[kRootIdAt + i] = static_cast<char>((*shifted >> (8 * i)) & 0xff);
}

bool isCarriedXattr(std::string_view name) {
  return name == kOverlayOpaqueXattr || name == "security.capability" || name.starts_with("user.");
}

bool isUncarriableOverlayXattr(std::string_view name) {
  for (std::string_view prefix : {"trusted.overlay.", "user.overlay."}) {
    if (!name.starts_with(prefix)) continue;
    auto rest = name.substr(prefix.size());
    if (rest == "redirect" || rest == "metacopy") return true;
  }
  return false;
}

bool tryNormaliseRelativePath(std::string_view path, std::string& out, std::string& problem) {
  out.clear();
  if (path.empty()) {
    problem = "empty path";
    return false;
  }
  if (path.size() > kMaxPathLength) {
    problem = "path longer than 4096 bytes";
    return false;
  }
  if (path.front() == '/') {
    problem = "absolute path";
    return false;
  }
  size_t pos = 0;
  while (pos <= path.size()) {
    size_t end = path.find('/', pos);
    if (end == std::string_view::npos) end = path.size();
    auto component = path.substr(pos, end - pos);
    pos = end + 1;
    if (component.empty() || component == ".") continue;
    if (component == "..") {
      problem = "`..` component in path";
      return false;
    }
    if (component.find('\0') != std::string_view::npos) {
      problem = "NUL byte in path";
      return false;
    }
    if (!out.empty()) out += '/';
    out += component;
  }
  if (out.empty()) {
    problem = "empty path";
    return false;
  }
  return true;
}

std::string normaliseRelativePath(std::string_view path) {
  std::string out, problem;
  if (!tryNormaliseRelativePath(path, out, problem)) fail(ErrorKind::InvalidInput, problem);
  return out;
}

std::string serializeDeletedFiles(const std::vector<std::string>& paths) {
  return nlohmann::json(paths).dump();
}

std::vector<std::string> parseDeletedFiles(std::string_view text) {
  nlohmann::json json = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_array()) fail(ErrorKind::InvalidInput, "not a JSON array of paths");
  std::vector<std::string> paths;
  paths.reserve(json.size());
  for (auto& item : json) {
    if (!item.is_string()) fail(ErrorKind::InvalidInput, "not a JSON array of paths");
    const auto& path = item.get_ref<const std::string&>();
    std::string normalised, problem;
    if (!tryNormaliseRelativePath(path, normalised, problem)) {
      fail(ErrorKind::InvalidInput, "path `" + path.substr(0, 200) + "`: " + problem);
    }
    paths.push_back(std::move(normalised));
  }
  return paths;
}

Fd openDirectoryBeneath(int rootFd, std::string_view relative, bool createMissing) {
  const uint64_t flags = O_PATH | O_DIRECTORY;
  std::string path = relative.empty() ? std::string(".") : std::string(relative);
  int fd = openat2Beneath(rootFd, path, flags);
  if (fd >= 0) return Fd(fd);
  if (errno == ELOOP || errno == EXDEV || errno == ENOTDIR) {
    fail(ErrorKind::InvalidInput, "path `" + path + "` goes through a symlink or non-directory");
  }
  if (errno != ENOENT || !createMissing) failErrno(errno, "open directory " + path);

  // Walk one component at a time, so each mkdirat() acts on a directory we
  // opened ourselves without following anything.
  Fd current(SYSCALL(::fcntl(rootFd, F_DUPFD_CLOEXEC, 0), "dup"));
  size_t pos = 0;
  while (pos < path.size()) {
    size_t end = path.find('/', pos);
    if (end == std::string::npos) end = path.size();
    std::string component = path.substr(pos, end - pos);
    pos = end + 1;
    int next = openat2Beneath(current.get(), component, flags);
    if (next < 0 && errno == ENOENT) {
      if (::mkdirat(current.get(), component.c_str(), 0755) < 0 && errno != EEXIST) {
        failErrno(errno, "mkdir " + component);
      }
      next = openat2Beneath(current.get(), component, flags);
    }
    if (next < 0) {
      if (errno == ELOOP || errno == EXDEV || errno == ENOTDIR) {
        fail(ErrorKind::InvalidInput, "path `" + path + "` goes through a symlink or non-directory");
      }
      failErrno(errno, "open directory " + component);
    }
    current = Fd(next);
  }
  return current;
}

void createWhiteout(int upperDirFd, const std::string& relative) {
  auto slash = relative.rfind('/');
  std::string parent = slash == std::string::npos ? std::string() : relative.substr(0, slash);
  std::string base = slash == std::string::npos ? relative : relative.substr(slash + 1);
  Fd parentFd = openDirectoryBeneath(upperDirFd, parent, /*createMissing=*/true);
  if (::mknodat(parentFd.get(), base.c_str(), S_IFCHR | 0000, makedev(0, 0)) < 0) {
    if (errno == EEXIST) fail(ErrorKind::InvalidInput, "whiteout `" + relative + "` collides with an existing entry");
    failErrno(errno, "mknod whiteout " + relative);
  }
}

}  // namespace migrate
