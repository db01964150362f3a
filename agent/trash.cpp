#include "agent/trash.h"

#include <fcntl.h>
#include <sys/file.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>

#include "common/error.h"
#include "common/files.h"
#include "common/log.h"

namespace migrate {

namespace fs = std::filesystem;

Trash::Trash(fs::path dir) : dir_(std::move(dir)) {
  fs::create_directories(dir_);
  lock_ = Fd(::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (lock_ && ::flock(lock_.get(), LOCK_EX | LOCK_NB) == 0) {
    for (auto& leftover : fs::directory_iterator(dir_)) queue_.push_back(leftover.path());
  }
  worker_ = std::thread([this] { run(); });
}

Trash::~Trash() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_one();
  worker_.join();
}

void Trash::discard(const fs::path& path) {
  // Unique: the same container id may come and go again before its first
  // directory is deleted.
  auto stamp = std::chrono::system_clock::now().time_since_epoch().count();
  fs::path doomed = dir_ / (path.filename().string() + "." + std::to_string(stamp));
  if (std::rename(path.c_str(), doomed.c_str()) != 0) {
    if (errno == ENOENT) return;
    logDebug("trash: " + path.string() + " cannot be moved (" + std::strerror(errno) + "); deleting it in place");
    removeTree(path);
    return;
  }
  {
    std::lock_guard lock(mutex_);
    queue_.push_back(doomed);
  }
  wake_.notify_one();
}

void Trash::run() {
  std::unique_lock lock(mutex_);
  for (;;) {
    wake_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stopping, and nothing left
    fs::path doomed = queue_.front();
    queue_.pop_front();
    lock.unlock();
    try {
      removeTree(doomed);
    } catch (const std::exception& e) {
      logWarn(std::string("trash: ") + e.what());
    }
    lock.lock();
  }
}

}  // namespace migrate
