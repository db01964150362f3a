// Idmapped mounts (mount_setattr(2) MOUNT_ATTR_IDMAP): a tree whose files are
// owned by ids 0..size-1 on disk appears owned by hostId..hostId+size-1, so an
// image unpacked once serves every container whatever its mapping, with no
// copy (docs/userns.md has the figures against a shifted copy).
#pragma once

#include <filesystem>

#include "agent/id-mapping.h"
#include "common/fd.h"

namespace migrate {

namespace fs = std::filesystem;

// A user namespace with `mapping` for uids and gids, held by the returned fd
// (/proc/<pid>/ns/user of a short-lived child that made it).
Fd makeUserNamespace(const IdMapping& mapping);

// Attaches an idmapped copy of the mount tree at `source` on `target` (a
// directory, created if missing). No-op when `target` is already a mount point.
void mountIdmapped(const fs::path& source, const fs::path& target, const IdMapping& mapping);

}  // namespace migrate
