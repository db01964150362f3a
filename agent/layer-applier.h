// Image layers applied to a rootfs directory: tar entries extracted as
// hostile input (every name cleaned, nothing followed through a symlink,
// nothing written outside the directory), with overlay-style whiteouts
// (.wh.<name>, .wh..wh..opq) honoured for OCI layers.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

#include "agent/tar-stream.h"
#include "common/stream.h"

struct archive_entry;

namespace migrate {

namespace fs = std::filesystem;

// Reads a tar (any compression libarchive detects) from an InputStream,
// reporting libarchive's errors as InvalidInput ("corrupt tar archive (…)").
class TarReader {
 public:
  explicit TarReader(InputStream& in);

  archive* get() { return archive_.get(); }
  // The next entry, or nullptr at the end of the archive.
  archive_entry* next();
  // The current entry's data, InvalidInput past `max` bytes.
  std::string readData(uint64_t max);
  [[noreturn]] void rethrowOrFail(const std::string& what);

 private:
  TarInputArchive archive_;
};

// Literal: whiteout names are plain files (a rootfs tarball, an unpacked
// layout). Apply: they delete what lower layers put there (an OCI layer).
enum class Whiteouts { Literal, Apply };

// Extracts every remaining entry of `reader` into `rootfs`. With a `prefix`,
// entries must lie beneath it (e.g. "rootfs") and are re-rooted; others are
// refused. Throws Error(InvalidInput) "entry `…`: refused (…)" for anything
// hostile; what was extracted before stays, for the caller to discard.
void applyLayer(TarReader& reader, const fs::path& rootfs, Whiteouts whiteouts, const std::string& prefix = {});

}  // namespace migrate
