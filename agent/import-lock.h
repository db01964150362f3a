// Locks that tell a live import from one a killed process left behind, and
// keep two imports from receiving the same container name.
#pragma once

#include <fcntl.h>

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

#include "common/fd.h"

namespace migrate {

namespace fs = std::filesystem;

// Staging directories of imports in progress are named <kImportPrefix>.XXXXXX
// beside the containers' (agent.h, removeStaleImports()).
constexpr std::string_view kImportPrefix = ".import";

// An exclusive flock(2) on a file or directory, held by an open file
// description: the kernel lets go when its holder dies however it dies, so
// a lock left by a killed import is simply free. Across processes and
// between two opens in one process alike.
class ImportLock {
 public:
  // nullopt when another holds it.
  static std::optional<ImportLock> tryAcquire(const fs::path& path, int flags = O_RDONLY | O_DIRECTORY);
  int fd() const { return fd_.get(); }

 private:
  explicit ImportLock(Fd fd) : fd_(std::move(fd)) {}
  Fd fd_;
};

// A container name reserved while it is imported: a lock file per name under
// stateDir/names/, removed again by its holder (the classic lock-unlink
// dance: a waiter that locked an unlinked file tries again). Conflict "name
// ... is in use" when another import holds it.
class NameReservation {
 public:
  NameReservation(const fs::path& stateDir, const std::string& name, const std::string& host);
  NameReservation(const NameReservation&) = delete;
  NameReservation& operator=(const NameReservation&) = delete;
  ~NameReservation();

 private:
  fs::path path_;
  std::optional<ImportLock> lock_;
};

}  // namespace migrate
