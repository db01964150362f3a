// Streams a checkpointed container out as a bundle (agent/bundle.h): a pax
// tar written straight into an OutputStream, no intermediate archive.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>

#include "agent/bundle.h"
#include "common/signing.h"
#include "common/stream.h"

namespace migrate {

namespace fs = std::filesystem;

struct BundleSources {
  // checkpointBytes/rootfsDiffBytes and formatVersion are filled in by writeBundle.
  BundleManifest manifest;
  fs::path configDump;  // required
  fs::path specDump;    // required
  // Optional files: skipped when unset or when the file does not exist.
  std::optional<fs::path> networkStatus;
  std::optional<fs::path> ctrLog;
  std::optional<fs::path> statsDump;
  fs::path checkpointDir;           // CRIU images -> "checkpoint/..."
  std::optional<fs::path> upperDir;  // overlay upper dir -> "rootfs-diff/..." + "deleted.files"
  // Signs the bundle: signature.json, last (agent/bundle-signature.h).
  // Null: an unsigned bundle, which a target restores only when told to.
  const SigningKey* signer = nullptr;
};

// Writes the bundle tar into `out` (wrap it in ZstdOutputStream, hashing and
// TLS as needed). File data is streamed in chunks; no file is held whole in
// memory. `onProgress` sees the running total of file bytes read. Does not
// call out.finish(): the caller finishes its chain once this returns.
// Throws if a source changes while it is written (the container must be
// checkpointed, i.e. stopped), or if the upper dir holds something a bundle
// cannot carry (fifo, device node, overlay redirect/metacopy).
// Returns the SHA-256 (hex) of the tar bytes before signature.json: the
// digest it signs.
std::string writeBundle(const BundleSources& sources, OutputStream& out,
                        std::function<void(uint64_t bytesIn)> onProgress = {});

// What a bundle would carry of an overlay upper dir, as its manifest
// declares it (rootfsDiffBytes, rootfsDiffEntries).
struct RootfsDiffSize {
  uint64_t bytes = 0;
  uint64_t entries = 0;
};
RootfsDiffSize rootfsDiffSize(const fs::path& upperDir);

}  // namespace migrate
