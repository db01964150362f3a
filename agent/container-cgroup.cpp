#include "agent/container-cgroup.h"

#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <sstream>
#include <thread>

#include "common/files.h"

namespace migrate {

namespace fs = std::filesystem;

namespace {

// The mounted hierarchies: /sys/fs/cgroup itself when it is v2, else each
// directory under it that is a cgroup root (v1 controllers, a v2 `unified`);
// the symlinks v1 adds for joint controllers (cpu -> cpu,cpuacct) skipped.
std::vector<fs::path> hierarchies() {
  std::error_code ec;
  if (fs::exists("/sys/fs/cgroup/cgroup.procs", ec)) return {"/sys/fs/cgroup"};
  std::vector<fs::path> roots;
  for (auto& entry : fs::directory_iterator("/sys/fs/cgroup", ec)) {
    if (entry.is_symlink(ec) || !fs::exists(entry.path() / "cgroup.procs", ec)) continue;
    roots.push_back(entry.path());
  }
  return roots;
}

}  // namespace

std::vector<fs::path> cgroupDirs(const std::string& cgroupsPath) {
  fs::path relative = fs::path(cgroupsPath).relative_path();
  std::vector<fs::path> dirs;
  for (auto& root : hierarchies()) dirs.push_back(root / relative);
  return dirs;
}

std::vector<pid_t> cgroupMembers(const std::string& cgroupsPath) {
  std::vector<pid_t> pids;
  for (auto& dir : cgroupDirs(cgroupsPath)) {
    auto text = readFileTailIfExists(dir / "cgroup.procs", 1 << 20);
    if (!text) continue;
    std::istringstream lines(*text);
    for (long pid; lines >> pid;) {
      if (pid > 1) pids.push_back(static_cast<pid_t>(pid));
    }
  }
  return pids;
}

namespace {

// A cgroup file takes a plain write (no temporary file and rename).
bool writeCgroupFile(const fs::path& file, const char* value) {
  FILE* f = std::fopen(file.c_str(), "w");
  if (!f) return false;
  bool ok = std::fputs(value, f) >= 0;
  return std::fclose(f) == 0 && ok;
}

}  // namespace

bool freezeCgroup(const std::string& cgroupsPath) {
  bool frozen = false;
  for (auto& dir : cgroupDirs(cgroupsPath)) {
    std::error_code ec;
    if (fs::exists(dir / "cgroup.freeze", ec)) frozen = writeCgroupFile(dir / "cgroup.freeze", "1") || frozen;
    if (fs::exists(dir / "freezer.state", ec)) frozen = writeCgroupFile(dir / "freezer.state", "FROZEN") || frozen;
  }
  return frozen;
}

size_t joinCgroup(const std::string& cgroupsPath) {
  size_t joined = 0;
  for (auto& dir : cgroupDirs(cgroupsPath)) {
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (!ec && writeCgroupFile(dir / "cgroup.procs", "0")) ++joined;
  }
  return joined;
}

bool removeCgroup(const std::string& cgroupsPath, std::chrono::milliseconds wait) {
  if (cgroupsPath.empty()) return true;
  auto deadline = std::chrono::steady_clock::now() + wait;
  for (;;) {
    for (pid_t pid : cgroupMembers(cgroupsPath)) ::kill(pid, SIGKILL);
    bool left = false;
    for (auto& dir : cgroupDirs(cgroupsPath)) {
      std::error_code ec;
      if (::rmdir(dir.c_str()) != 0 && fs::exists(dir, ec)) left = true;
    }
    if (!left) return true;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

bool cgroupFrozen(const std::string& cgroupsPath) {
  for (auto& dir : cgroupDirs(cgroupsPath)) {
    if (auto state = readFileIfExists(dir / "freezer.state"); state && state->rfind("FROZEN", 0) == 0) return true;
    if (auto events = readFileIfExists(dir / "cgroup.events"); events && events->find("frozen 1") != std::string::npos) {
      return true;
    }
  }
  return false;
}

}  // namespace migrate
