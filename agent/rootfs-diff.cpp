#include "agent/rootfs-diff.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/files.h"
#include "common/relative-path.h"
#include "common/syscall.h"

namespace migrate {

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
  const int flags = O_PATH | O_DIRECTORY;
  std::string path = relative.empty() ? std::string(".") : std::string(relative);
  auto refuse = [&](int error, const std::string& what) {
    if (error == ELOOP || error == EXDEV || error == ENOTDIR) {
      fail(ErrorKind::InvalidInput, "path `" + path + "` goes through a symlink or non-directory");
    }
    failErrno(error, "open directory " + what);
  };
  int error = 0;
  Fd fd = tryOpenBeneath(rootFd, path, flags, Symlinks::Refuse, error);
  if (fd) return fd;
  if (error != ENOENT || !createMissing) refuse(error, path);

  // Walk one component at a time, so each mkdirat() acts on a directory we
  // opened ourselves without following anything.
  Fd current(SYSCALL(::fcntl(rootFd, F_DUPFD_CLOEXEC, 0), "dup"));
  size_t pos = 0;
  while (pos < path.size()) {
    size_t end = path.find('/', pos);
    if (end == std::string::npos) end = path.size();
    std::string component = path.substr(pos, end - pos);
    pos = end + 1;
    Fd next = tryOpenBeneath(current.get(), component, flags, Symlinks::Refuse, error);
    if (!next && error == ENOENT) {
      if (::mkdirat(current.get(), component.c_str(), 0755) < 0 && errno != EEXIST) {
        failErrno(errno, "mkdir " + component);
      }
      next = tryOpenBeneath(current.get(), component, flags, Symlinks::Refuse, error);
    }
    if (!next) refuse(error, component);
    current = std::move(next);
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
