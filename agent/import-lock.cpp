#include "agent/import-lock.h"

#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include "common/error.h"
#include "common/files.h"
#include "common/hash-stream.h"
#include "common/syscall.h"

namespace migrate {

std::optional<ImportLock> ImportLock::tryAcquire(const fs::path& path, int flags) {
  Fd fd = openOrFail(path, flags | O_NOFOLLOW, 0600);
  if (::flock(fd.get(), LOCK_EX | LOCK_NB) < 0) {
    if (errno == EWOULDBLOCK) return std::nullopt;
    failErrno(errno, "flock " + path.string());
  }
  return ImportLock(std::move(fd));
}

NameReservation::NameReservation(const fs::path& stateDir, const std::string& name, const std::string& host) {
  fs::path dir = stateDir / "names";
  fs::create_directories(dir);
  // Hashed: the name comes from a bundle and must not steer a path.
  path_ = dir / sha256Hex(name);
  for (;;) {
    auto lock = ImportLock::tryAcquire(path_, O_RDWR | O_CREAT);
    if (!lock) fail(ErrorKind::Conflict, "name `" + name + "` is in use on " + host + ": another import is receiving it");
    struct stat held, named;
    SYSCALL(::fstat(lock->fd(), &held), "fstat", path_.string());
    if (::stat(path_.c_str(), &named) == 0 && named.st_ino == held.st_ino && named.st_dev == held.st_dev) {
      lock_.emplace(std::move(*lock));
      return;
    }
  }
}

NameReservation::~NameReservation() { ::unlink(path_.c_str()); }  // while still locked; the Fd closes after

}  // namespace migrate
