// Small filesystem helpers: atomic writes, whole-file reads, directory guards.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

#include "common/fd.h"

namespace migrate {

namespace fs = std::filesystem;

// Writes `content` to `path` so that a reader sees either the old file or the
// whole new one, never a torn write: temp file in the same directory, fsync,
// rename, fsync of the directory.
void writeFileAtomic(const fs::path& path, std::string_view content, mode_t mode = 0644);

std::string readFile(const fs::path& path);
std::optional<std::string> readFileIfExists(const fs::path& path);

// At most the last `maxBytes` of a file (all of it when smaller), for logs
// a child process may have grown without bound; nullopt when it is missing.
std::optional<std::string> readFileTailIfExists(const fs::path& path, size_t maxBytes);

Fd openOrFail(const fs::path& path, int flags, mode_t mode = 0);

// How openBeneath treats symlinks on the way to `relative`. Either way the
// walk stays beneath `dirfd` and never takes a magic link (/proc/<pid>/fd/N):
// openat2(2) RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS, as crun's safe_openat.
enum class Symlinks {
  // Followed while they resolve beneath `dirfd` (a layout's own relative links).
  FollowBeneath,
  // Refused, even one that points inside (RESOLVE_NO_SYMLINKS): for a tree
  // that hostile input is still shaping, where a link could be swapped later.
  Refuse,
};

// Opens `relative` beneath `dirfd` ("" or "." is `dirfd` itself).
Fd openBeneath(int dirfd, const fs::path& relative, int flags, mode_t mode = 0,
               Symlinks symlinks = Symlinks::FollowBeneath);
// The same, but a failure is the errno in `error` and an empty Fd, for callers
// that tell ELOOP/EXDEV (a symlink or an escape), ENOTDIR and ENOENT apart.
Fd tryOpenBeneath(int dirfd, const fs::path& relative, int flags, Symlinks symlinks, int& error, mode_t mode = 0);

// A directory removed with everything in it when the guard dies, unless kept.
class TempDir {
 public:
  explicit TempDir(const fs::path& parent, std::string_view prefix = "tmp");
  TempDir(TempDir&& other) noexcept;
  TempDir& operator=(TempDir&&) = delete;
  ~TempDir();
  const fs::path& path() const { return path_; }
  fs::path keep();  // Disowns the directory; it stays on disk.

 private:
  fs::path path_;
};

// Removes a tree, first unmounting nothing: callers unmount before.
void removeTree(const fs::path& path);

// Total size in bytes of regular files under `path` (not following symlinks).
uint64_t treeSize(const fs::path& path);

}  // namespace migrate
