// Overlay storage for one container: the image's rootfs as the read-only lower
// layer, a per-container upper and work dir, merged at `rootfs/`.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>

#include "agent/id-mapping.h"

namespace migrate {

namespace fs = std::filesystem;

struct OverlayPaths {
  fs::path lower;   // image rootfs (read-only, shared)
  fs::path upper;   // the container's writable layer; what the bundle carries
  fs::path work;    // overlayfs scratch, same filesystem as upper
  fs::path merged;  // mount point given to runc as root.path
  // A container in a user namespace: `lower` is attached idmapped at
  // `mappedLower` (agent/idmapped-mount.h) and the overlay stacks on that, so
  // the image's files appear owned by the container's root; the upper dir
  // holds host ids (hostId + the container's), as the kernel writes them.
  std::optional<IdMapping> idMapping;
  fs::path mappedLower;
};

// Mounts the overlay unless it is already mounted there (idempotent, so a
// restarted agent can call it for each running container). With an id
// mapping, the upper dir's root is owned by the container's root.
void mountOverlay(const OverlayPaths& paths);
// Lazily unmounts the overlay, then the idmapped lower; no-op for what is not mounted.
void unmountOverlay(const OverlayPaths& paths);
bool isMountPoint(const fs::path& path);
// A container in a user namespace reaches its rootfs as an unprivileged host
// uid (runc mounts it from inside the namespace): every directory on the way
// must be searchable by others. Adds o+x to those at or below `ownedTop`
// (the agent's state dir; its import staging dirs are made 0700) and throws
// Error(InvalidInput) naming the first one above it that lacks it.
void makeSearchable(const fs::path& path, const fs::path& ownedTop);
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
