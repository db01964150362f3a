// OCI image layout (image-spec v1.0/1.1 image-layout.md), read as hostile
// input: descriptors, blobs verified against their digest and size, the
// manifest chosen from an index, and the image config's runtime defaults.
// The JSON field readers serve image.json too (agent/image-store.h).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "agent/image-store.h"
#include "common/fd.h"
#include "common/hash-stream.h"
#include "common/stream.h"

namespace migrate {

// Manifests, configs and indexes are small; a bigger one is hostile.
constexpr uint64_t kMaxJsonBlob = 4u << 20;

// An image's JSON documents, parsed with bounded nesting (common/untrusted-json.h):
// an object, or Error(InvalidInput) "<what>: not valid JSON (…)" / "…: not a JSON object".
nlohmann::json parseImageJson(std::string_view text, std::string_view what);
// A list of strings (null: empty), or Error(InvalidInput).
std::vector<std::string> stringList(const nlohmann::json& value, std::string_view what);
// A string field ("" when absent or null), or Error(InvalidInput).
std::string stringField(const nlohmann::json& object, const char* key);
// Validates a digest from untrusted input ("sha256:<64 hex>"; other
// algorithms are Unimplemented); only its hex is ever used to build a path.
std::string checkedDigest(const nlohmann::json& value, std::string_view what);
inline std::string_view digestHex(std::string_view digest) { return digest.substr(7); }
// "sha256:" and 12 hex digits, for messages.
inline std::string shortDigest(std::string_view digest) { return std::string(digest.substr(0, 7 + 12)) + "…"; }
// The tag of "name:tag" ("" for none; a registry port is not a tag).
std::string tagOf(const std::string& name);

// Hashes and counts what passes through, so a blob is verified in the same
// pass that extracts it.
class HashingInputStream final : public InputStream {
 public:
  explicit HashingInputStream(InputStream& inner) : hashed_(inner), counted_(hashed_) {}
  size_t read(void* buffer, size_t size) override { return counted_.read(buffer, size); }
  // Reads the rest, so the digest covers the whole stream even when the tar
  // reader stopped at its end-of-archive marker.
  void drain() {
    char buf[65536];
    while (read(buf, sizeof buf) > 0) {
    }
  }
  std::string digest() const { return "sha256:" + hashed_.hexDigest(); }
  uint64_t count() const { return counted_.count(); }

 private:
  Sha256InputStream hashed_;
  CountingInputStream counted_;
};

struct Descriptor {
  std::string mediaType;
  std::string digest;
  uint64_t size = 0;
  nlohmann::json json;
};

Descriptor parseDescriptor(const nlohmann::json& json, std::string_view what);
bool isLayerMediaType(const std::string& mediaType);
// blobs/sha256/<hex> beneath the layout; InvalidInput when it is missing.
Fd openBlob(int layoutFd, const Descriptor& descriptor);
// InvalidInput unless what was read has the descriptor's size and digest.
void verifyBlob(const Descriptor& descriptor, const HashingInputStream& read);
// A manifest, config or index blob (at most kMaxJsonBlob), verified.
std::string readJsonBlob(int layoutFd, const Descriptor& descriptor);
// Picks the manifest for `name` (or the first) from an index, following
// nested indexes to this machine's platform.
Descriptor selectManifest(int layoutFd, const nlohmann::json& index, const std::string& name, int depth = 0);
// The runtime defaults of an image config (its `config` object).
ImageConfig parseImageConfig(const nlohmann::json& config);

}  // namespace migrate
