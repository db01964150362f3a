// Hostile bundles for attack tests (issue 9), made from a real exported one:
// unpack it into a directory, let the test change any file there as an
// attacker on the source host would, and pack it again as a valid bundle
// tar (pax, zstd; entries in the order the reader wants; the manifest's
// checkpointBytes/rootfsDiffBytes fixed up to what the directory now holds),
// so that what a restore refuses is the attack, not a broken container.
//
//   HostileBundle b(exported);
//   editSomething(b.dir() / "checkpoint" / "core-1.img");
//   b.repack(out);
//
// It packs with libarchive directly, not through writeBundle: it must be able
// to write what writeBundle never would.
#pragma once

#include <filesystem>

#include <nlohmann/json.hpp>

#include "common/files.h"

namespace migrate::test {

namespace fs = std::filesystem;

class HostileBundle {
 public:
  explicit HostileBundle(const fs::path& bundle);
  HostileBundle(const HostileBundle&) = delete;

  // The unpacked bundle: manifest.json, config.dump, spec.dump, checkpoint/, ...
  const fs::path& dir() const { return dir_.path(); }
  nlohmann::json manifest() const;
  void setManifest(const nlohmann::json& manifest) const;

  // Packs dir() into `out`. With fixSizes, the manifest's byte counts are set
  // to the regular-file bytes under checkpoint/ and rootfs-diff/ first.
  void repack(const fs::path& out, bool fixSizes = true) const;

 private:
  TempDir dir_;
};

}  // namespace migrate::test
