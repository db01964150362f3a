// Overlay upper-dir conventions the bundle has to carry across hosts
// (Documentation/filesystems/overlayfs.rst): whiteouts, opaque directories,
// and which xattrs survive the trip.
#pragma once

#include <sys/stat.h>

#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/fd.h"

namespace migrate {

// Marks a directory of the upper dir as hiding everything below it in the lower layers.
constexpr std::string_view kOverlayOpaqueXattr = "trusted.overlay.opaque";

// File capabilities; a version 3 value names the user namespace root it
// applies under by host id (capabilities(7), "Namespaced file capabilities").
constexpr std::string_view kFileCapabilityXattr = "security.capability";

// Rewrites the root id of a version 3 file capability value with `shift`
// (container <-> host ids). Throws Error(InvalidInput) for any other value:
// a version 1 or 2 capability names no namespace root and would grant its
// capabilities in the host's user namespace (a file in a user-namespaced
// container's upper dir always has version 3: the kernel writes it so), and
// when `shift` returns nothing (an id past the mapping).
void shiftFileCapabilityRoot(std::vector<char>& value, const std::function<std::optional<uint32_t>(uint32_t)>& shift);

// A whiteout: a character device with device number 0/0 in the upper dir.
bool isWhiteout(const struct stat& st);

// Whether a bundle carries this xattr. Others (security.selinux, which the
// target relabels; trusted.overlay.origin/impure, which name lower-layer
// inodes of the source host) are dropped.
bool isCarriedXattr(std::string_view name);

// Overlay features whose xattrs point at lower-layer paths or data
// (redirect_dir, metacopy): an upper dir using them cannot be carried as a
// plain file tree, so the writer refuses it rather than lose data.
bool isUncarriableOverlayXattr(std::string_view name);

// Paths in a bundle are checked by normaliseRelativePath (common/relative-path.h).

// deleted.files: a JSON array of upper-dir-relative paths, one per whiteout.
std::string serializeDeletedFiles(const std::vector<std::string>& paths);
// Throws Error(InvalidInput) on anything but an array of valid relative paths.
std::vector<std::string> parseDeletedFiles(std::string_view json);

// Opens directory `relative` (normalised; "" is `rootFd` itself) beneath
// `rootFd` refusing every symlink on the way (openat2 RESOLVE_BENEATH |
// RESOLVE_NO_SYMLINKS), so nothing hostile can redirect a later *at() call
// outside. With `createMissing`, absent components are made 0755 root:root.
// Returns an O_PATH fd, good as the dirfd of *at() calls.
Fd openDirectoryBeneath(int rootFd, std::string_view relative, bool createMissing);

// Creates the whiteout for `relative` (normalised) beneath `upperDirFd`
// without following any symlink, creating missing parents (0755 root:root).
void createWhiteout(int upperDirFd, const std::string& relative);

}  // namespace migrate
