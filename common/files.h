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

// Opens `relative` beneath `dirfd` without following symlinks out of it
// (openat2 RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS), as crun's safe_openat.
Fd openBeneath(int dirfd, const fs::path& relative, int flags, mode_t mode = 0);

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
