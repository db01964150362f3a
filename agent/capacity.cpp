#include "agent/capacity.h"

#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>

#include <optional>
#include <sstream>

#include "common/error.h"
#include "common/files.h"
#include "common/syscall.h"

namespace migrate {

namespace {

constexpr uint64_t kPage = 4096;

uint64_t saturatingAdd(uint64_t a, uint64_t b) { return a > UINT64_MAX - b ? UINT64_MAX : a + b; }

uint64_t saturatingMul(uint64_t a, uint64_t b) { return b != 0 && a > UINT64_MAX / b ? UINT64_MAX : a * b; }

std::string mib(uint64_t bytes) { return std::to_string(bytes >> 20) + " MiB"; }

struct Meminfo {
  uint64_t total = 0, available = 0;  // bytes
};

// MemTotal and MemAvailable from one read of /proc/meminfo (the heartbeat
// measures it every interval).
Meminfo readMeminfo() {
  std::istringstream in(readFile("/proc/meminfo"));
  std::string key;
  uint64_t kib;
  std::optional<uint64_t> total, available;
  while (in >> key >> kib && !(total && available)) {
    if (key == "MemTotal:") total = kib << 10;
    if (key == "MemAvailable:") available = kib << 10;
    in.ignore(64, '\n');
  }
  if (!total) fail("/proc/meminfo has no MemTotal");
  if (!available) fail("/proc/meminfo has no MemAvailable");
  return Meminfo{*total, *available};
}

}  // namespace

HostCapacity HostCapacity::measure(const fs::path& landingDir) {
  struct statvfs vfs;
  SYSCALL(::statvfs(landingDir.c_str(), &vfs), "statvfs", landingDir.string());
  HostCapacity c;
  auto mem = readMeminfo();
  c.memAvailable = mem.available;
  c.memTotal = mem.total;
  c.diskAvailable = saturatingMul(vfs.f_bavail, vfs.f_frsize);
  c.diskTotal = saturatingMul(vfs.f_blocks, vfs.f_frsize);
  c.diskInodes = vfs.f_favail;
  c.cpus = static_cast<uint32_t>(std::max(0L, sysconf(_SC_NPROCESSORS_ONLN)));
  double avg[1] = {0};
  if (getloadavg(avg, 1) == 1) c.loadAvg1 = avg[0];
  return c;
}

TmpfsBounds checkpointTmpfsBounds(const BundleManifest& m) {
  uint64_t bytes = saturatingAdd(m.checkpointBytes, saturatingMul(m.checkpointEntries, kPage));
  bytes = saturatingAdd(bytes, saturatingAdd(16ull << 20, m.checkpointBytes / 64));
  bytes = saturatingAdd(bytes, kPage - 1) / kPage * kPage;
  return TmpfsBounds{bytes, saturatingAdd(m.checkpointEntries, 16)};
}

void precheckImport(const BundleManifest& m, const HostCapacity& free, bool checkpointsInMemory,
                    const fs::path& landingDir) {
  uint64_t diskBytes = m.rootfsDiffBytes;
  uint64_t diskEntries = m.rootfsDiffEntries;
  if (checkpointsInMemory) {
    TmpfsBounds tmpfs = checkpointTmpfsBounds(m);
    if (tmpfs.bytes > free.memAvailable) {
      fail(ErrorKind::Overloaded, "bundle declares checkpointBytes = " + std::to_string(m.checkpointBytes) +
                                      " (a tmpfs of " + std::to_string(tmpfs.bytes) + " bytes, " + mib(tmpfs.bytes) +
                                      ") but this host has MemAvailable = " + std::to_string(free.memAvailable) +
                                      " bytes (" + mib(free.memAvailable) + ")");
    }
  } else {
    diskBytes = saturatingAdd(diskBytes, m.checkpointBytes);
    diskEntries = saturatingAdd(diskEntries, m.checkpointEntries);
  }
  std::string what = checkpointsInMemory ? "rootfsDiffBytes" : "rootfsDiffBytes + checkpointBytes";
  if (diskBytes > free.diskAvailable) {
    fail(ErrorKind::Overloaded, "bundle declares " + what + " = " + std::to_string(diskBytes) + " (" + mib(diskBytes) +
                                    ") but " + landingDir.string() + " has " + std::to_string(free.diskAvailable) +
                                    " bytes free (" + mib(free.diskAvailable) + ")");
  }
  // btrfs has no inode table and reports 0 free: no bound to check there.
  if (free.diskInodes != 0 && diskEntries > free.diskInodes) {
    fail(ErrorKind::Overloaded, "bundle declares " + std::string(checkpointsInMemory ? "rootfsDiffEntries" :
                                                                 "rootfsDiffEntries + checkpointEntries") +
                                    " = " + std::to_string(diskEntries) + " but " + landingDir.string() + " has " +
                                    std::to_string(free.diskInodes) + " inodes free");
  }
}

}  // namespace migrate
