#include "agent/userfaultfd-copies.h"

#include <cstdlib>
#include <filesystem>
#include <string>

#include "common/syscalls.h"

namespace migrate {

namespace fs = std::filesystem;

size_t UserfaultfdCopies::takeFrom(pid_t pid) {
  std::lock_guard lock(mutex_);
  if (pid != pid_) {
    pid_ = pid;
    held_.clear();
    int fd = sys::pidfdOpen(pid);
    pidfd_ = Fd(fd);
  }
  if (!pidfd_) return copies_.size();
  std::error_code ec;
  for (auto& entry : fs::directory_iterator(fs::path("/proc") / std::to_string(pid) / "fd", ec)) {
    int number = std::atoi(entry.path().filename().c_str());
    if (held_.count(number)) continue;
    auto target = fs::read_symlink(entry.path(), ec);
    if (ec || target.string() != "anon_inode:[userfaultfd]") continue;
    int copy = sys::pidfdGetfd(pidfd_.get(), number);
    if (copy < 0) continue;
    held_.insert(number);
    copies_.emplace_back(copy);
  }
  return copies_.size();
}

}  // namespace migrate
