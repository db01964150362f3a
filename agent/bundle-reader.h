// Unpacks a bundle (agent/bundle.h) while it arrives. The input comes from
// another host and is parsed as hostile: nothing is ever written outside the
// target directory, whatever the bytes say.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>

#include "agent/bundle-signature.h"
#include "agent/bundle.h"
#include "common/stream.h"

namespace migrate {

namespace fs = std::filesystem;

// This host's policy, whatever a manifest declares (migrate-agent flags
// --max-import-bytes, --max-import-entries, --max-import-entry-bytes). Within
// it, a bundle gets exactly what its manifest declares (checkpointBytes,
// rootfsDiffBytes, checkpointEntries, rootfsDiffEntries): the first entry
// past a figure is refused before any of its bytes is written.
struct BundleLimits {
  uint64_t maxEntryBytes = 16ull << 30;  // one file
  uint64_t maxTotalBytes = 64ull << 30;  // what a manifest may declare: checkpointBytes + rootfsDiffBytes
  size_t maxEntries = 500'000;           // checkpointEntries + rootfsDiffEntries (whiteouts included)
};

// Reads a bundle tar stream (already decompressed, e.g. by ZstdInputStream)
// into `dir`, which must exist and be empty. Afterwards `dir` holds
// manifest.json, config.dump, spec.dump, [network.status], checkpoint/...,
// [rootfs-diff/...] (ready to be an overlay upper dir: whiteouts re-created
// from deleted.files, opaque xattrs kept), [deleted.files], [ctr.log],
// [stats-dump]. Ownership, modes, mtimes and the carried xattrs are kept.
//
// `onManifest` runs as soon as manifest.json (the first entry) is parsed, its
// version checked and its figures found within `limits`, so the caller can
// refuse early by throwing (free memory and disk, a name in use), and may
// make `dir`/checkpoint/ an empty directory (e.g. a tmpfs mount point sized
// from the manifest), which the reader then fills.
// Reads `in` to its end (so a hashing stream below sees every byte).
//
// Throws Error(InvalidInput, "bundle: entry `...`: <reason>") for anything
// hostile or malformed: absolute or `..` paths, paths through symlinks,
// symlinks leaving checkpoint/, hardlinks leaving their tree, device nodes,
// fifos, sockets, unknown top-level names, wrong order, sizes or counts past
// the manifest's figures or `limits` (the message names which), a truncated stream, a wrong format version, missing required
// entries. On error `dir` holds a partial bundle; the caller removes it.
//
// signature.json is not written to `dir`: `signature` (if given) gets its
// text and the digest of the tar bytes before it, and the caller decides
// with checkBundleSignature (agent/bundle-signature.h) whether to keep what
// was unpacked. readBundle itself accepts an unsigned bundle.
BundleManifest readBundle(InputStream& in, const fs::path& dir, const BundleLimits& limits = {},
                          std::function<void(const BundleManifest&)> onManifest = {},
                          ReadSignature* signature = nullptr);

}  // namespace migrate
