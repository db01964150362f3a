// The agent's content-addressed image store.
//
// Layout under the root (e.g. <state>/images):
//   sha256/<hex>/image.json   ImageInfo: digest, names, size, created, config
//   sha256/<hex>/rootfs/      the flattened root filesystem, read-only lower of overlay
//   tmp/                      imports in progress; renamed into sha256/ when complete
//
// An image appears in sha256/ by one rename of a complete directory, so a
// failed or interrupted import leaves nothing a reader can see (leftovers in
// tmp/ are removed when the store is opened). Every import source is hostile
// input: nothing is ever written outside the import's own directory.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/stream.h"

namespace migrate {

namespace fs = std::filesystem;

// The runtime defaults from an OCI image config; empty for a plain rootfs tarball.
struct ImageConfig {
  std::vector<std::string> entrypoint;
  std::vector<std::string> cmd;
  std::vector<std::string> env;  // KEY=VALUE
  std::string workingDir;
  std::string user;

  bool operator==(const ImageConfig&) const = default;
};

struct ImageInfo {
  std::string digest;               // "sha256:<64 hex>"
  std::vector<std::string> names;   // e.g. "busybox:latest"; each name is held by at most one image
  uint64_t size = 0;                // bytes of regular files in rootfs/
  std::string created;              // RFC 3339, from the image config or the import time
  ImageConfig config;

  nlohmann::json toJson() const;
  static ImageInfo fromJson(const nlohmann::json& json);  // InvalidInput on a malformed document
};

class ImageStore {
 public:
  explicit ImageStore(fs::path root);

  // Detects the kind of `source`: a directory holding oci-layout + index.json;
  // a tar (optionally gzip/zstd/xz compressed) holding them; else a plain
  // rootfs tarball. `name` may be empty (the image is then known by digest only).
  // Importing a digest that is already present only adds the name.
  ImageInfo import(const fs::path& source, const std::string& name);
  // Digest = sha256 of the tarball's bytes as stored.
  ImageInfo importRootfsTar(const fs::path& tarball, const std::string& name);
  // index.json -> manifest (the one whose org.opencontainers.image.ref.name
  // matches `name` or its tag, else the first; image indexes are followed to
  // this machine's platform) -> config + layers applied in order, whiteouts
  // honoured. Digest = the manifest's digest. Every blob is verified against
  // its descriptor's digest and size.
  ImageInfo importOciLayout(const fs::path& dirOrTar, const std::string& name);

  // Moves an image between agents: a tar of image.json then rootfs/. The
  // stream comes over an authenticated channel, so only its format is checked,
  // but extraction is as careful as for any import. Names from the stream are
  // taken only where no local image holds them already.
  void exportImage(const std::string& digest, OutputStream& out);
  ImageInfo importExported(InputStream& in);

  std::vector<ImageInfo> list() const;
  // `ref` is a name, "sha256:<hex>", or a unique hex prefix of at least 6
  // characters. A name without a tag also matches "<name>:latest".
  std::optional<ImageInfo> findIfExists(std::string_view ref) const;
  ImageInfo find(std::string_view ref) const;  // NotFound: "image `x` not found"
  fs::path rootfsPath(const ImageInfo& image) const;

  // A name moves to the newest image that claims it (as docker tags).
  void addName(std::string_view ref, const std::string& name);
  // Removes the whole image; Conflict when inUse(digest) says so.
  void remove(std::string_view ref, const std::function<bool(const std::string& digest)>& inUse);

 private:
  struct Pending;

  fs::path imageDir(std::string_view digest) const;
  fs::path tmpDir() const { return root_ / "tmp"; }
  std::optional<ImageInfo> readInfoIfExists(std::string_view digest) const;
  std::optional<ImageInfo> findLocked(std::string_view ref) const;
  std::vector<ImageInfo> listLocked() const;
  void writeInfo(const ImageInfo& info) const;
  // Removes `name` from every image but `keepDigest`.
  void takeNameLocked(const std::string& name, const std::string& keepDigest);
  ImageInfo addNameToExisting(const std::string& digest, const std::string& name);
  // Moves a completed import into sha256/, or adds its name when another
  // import of the same digest won the race.
  ImageInfo commit(Pending& pending, ImageInfo info, const std::string& name, bool adoptNamesOnlyIfFree);

  ImageInfo importRootfsTarWithDigest(const fs::path& tarball, const std::string& name, const std::string& digest);
  ImageInfo importOciLayoutDir(const fs::path& layout, const std::string& name);

  fs::path root_;
  // Serialises name moves, commits and removals; extraction runs unlocked.
  mutable std::mutex mutex_;
};

}  // namespace migrate
