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

struct BundleLimits {
  uint64_t maxEntryBytes = 64ull << 30;
  uint64_t maxTotalBytes = 256ull << 30;
  size_t maxEntries = 2'000'000;
};

// Reads a bundle tar stream (already decompressed, e.g. by ZstdInputStream)
// into `dir`, which must exist and be empty (but for an empty
// `checkpoint/` the caller may prepare, e.g. as a tmpfs mount point). Afterwards `dir` holds
// manifest.json, config.dump, spec.dump, [network.status], checkpoint/...,
// [rootfs-diff/...] (ready to be an overlay upper dir: whiteouts re-created
// from deleted.files, opaque xattrs kept), [deleted.files], [ctr.log],
// [stats-dump]. Ownership, modes, mtimes and the carried xattrs are kept.
//
// `onManifest` runs as soon as manifest.json (the first entry) is parsed and
// its version checked, so the caller can refuse early by throwing.
// Reads `in` to its end (so a hashing stream below sees every byte).
//
// Throws Error(InvalidInput, "bundle: entry `...`: <reason>") for anything
// hostile or malformed: absolute or `..` paths, paths through symlinks,
// symlinks leaving checkpoint/, hardlinks leaving their tree, device nodes,
// fifos, sockets, unknown top-level names, wrong order, over-limit sizes or
// counts, a truncated stream, a wrong format version, missing required
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
