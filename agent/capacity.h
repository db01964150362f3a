// What this host has free for an import, and the precheck that compares it
// with what a bundle's manifest declares before anything is written
// (issue 9: a bundle must not fill the host's memory or disk).
#pragma once

#include <cstdint>
#include <filesystem>

#include "agent/bundle.h"
#include "agent/storage.h"

namespace migrate {

namespace fs = std::filesystem;

// What this host has and has free: for an import's precheck, and for the
// capacity and load the agent reports to the coordinator.
struct HostCapacity {
  uint64_t memAvailable = 0;   // /proc/meminfo MemAvailable, bytes: what a tmpfs may take
  uint64_t diskAvailable = 0;  // statvfs of where imports land (stateDir/containers): f_bavail * f_frsize
  uint64_t diskInodes = 0;     // statvfs f_favail
  uint64_t memTotal = 0;       // /proc/meminfo MemTotal, bytes
  uint64_t diskTotal = 0;      // statvfs f_blocks * f_frsize
  uint32_t cpus = 0;           // online
  double loadAvg1 = 0;         // getloadavg, 1 minute

  static HostCapacity measure(const fs::path& landingDir);
};

// The checkpoint tmpfs for a bundle: its declared bytes plus a page per
// entry (tmpfs rounds each file up) plus a margin of 16 MiB + 1/64; inodes:
// its declared entries plus a few.
TmpfsBounds checkpointTmpfsBounds(const BundleManifest& manifest);

// Throws Error(Overloaded) naming the declared figure and the free one when
// the bundle cannot fit: the checkpoint tmpfs in MemAvailable (or, with
// checkpoints on disk, on `landingDir`'s filesystem with rootfs-diff/).
void precheckImport(const BundleManifest& manifest, const HostCapacity& free, bool checkpointsInMemory,
                    const fs::path& landingDir);

}  // namespace migrate
