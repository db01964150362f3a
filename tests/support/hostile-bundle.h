// A real exported bundle, unpacked for a test to mutate and packed again
// with its manifest's figures fixed up, so that the target's reader accepts
// it and the mutation reaches what comes after (CRIU, restore).
#pragma once

#include <filesystem>

#include "common/files.h"

namespace migrate::test {

class HostileBundle {
 public:
  // Unpacks `bundle` (tar+zstd) with the agent's own reader.
  explicit HostileBundle(const fs::path& bundle);
  // manifest.json, config.dump, spec.dump, checkpoint/, rootfs-diff/, ...
  const fs::path& dir() const { return dir_; }
  // Packs dir() into `out` as writeBundle does: the manifest as dir() has
  // it, with its byte and entry figures recomputed.
  void repack(const fs::path& out) const;

 private:
  TempDir scratch_;
  fs::path dir_;
};

}  // namespace migrate::test
