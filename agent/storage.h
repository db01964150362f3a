// Overlay storage for one container: the image's rootfs as the read-only lower
// layer, a per-container upper and work dir, merged at `rootfs/`.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>

namespace migrate {

namespace fs = std::filesystem;

struct OverlayPaths {
  fs::path lower;   // image rootfs (read-only, shared)
  fs::path upper;   // the container's writable layer; what the bundle carries
  fs::path work;    // overlayfs scratch, same filesystem as upper
  fs::path merged;  // mount point given to runc as root.path
};

// Mounts the overlay unless it is already mounted there (idempotent, so a
// restarted agent can call it for each running container).
void mountOverlay(const OverlayPaths& paths);
// Lazily unmounts; no-op when not mounted.
void unmountOverlay(const fs::path& merged);
bool isMountPoint(const fs::path& path);
// Lazily unmounts every mount at or below `dir`, deepest first: what a killed
// CRIU leaves (its cgroup yard in the work dir, runc's criu-root overlay).
void unmountAllUnder(const fs::path& dir);

// A fresh, empty tmpfs at `dir` (created if missing), for CRIU images: a dump
// written to memory and restored from memory skips two passes over the disk
// on the migration's critical path (docs/benchmarks.md). The price: images
// in memory do not survive a reboot of the host, which the frozen container
// would not survive either.
// `bounds` caps its bytes (size=) and inodes (nr_inodes=): an import's
// tmpfs is sized from what its manifest declared (agent/capacity.h), so a
// bundle cannot write more into the host's memory than was prechecked.
struct TmpfsBounds {
  uint64_t bytes = 0;
  uint64_t inodes = 0;
};
void mountScratchTmpfs(const fs::path& dir, std::optional<TmpfsBounds> bounds = std::nullopt);
// Unmounts `dir` if something is mounted there, then removes it.
void releaseDirectory(const fs::path& dir);

}  // namespace migrate
