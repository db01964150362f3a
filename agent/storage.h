// Overlay storage for one container: the image's rootfs as the read-only lower
// layer, a per-container upper and work dir, merged at `rootfs/`.
#pragma once

#include <filesystem>

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

}  // namespace migrate
