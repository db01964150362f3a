// The bundle's signature (agent/bundle.h, format version 2): the source
// agent signs the SHA-256 of every tar byte before the last entry,
// `signature.json`, with its Ed25519 key (common/signing.h); the target
// checks it against the keys it trusts before it keeps anything it unpacked.
//
// signature.json:
//   {"formatVersion": 2, "algorithm": "ed25519", "signer": "ed25519:<hex>",
//    "sourceHost": ..., "containerName": ..., "containerId": ...,
//    "tarSha256": "<hex>", "signature": "<hex, 64 bytes>"}
// `signature` is over statement(): a domain-separated, length-prefixed text
// of every other field, so a signature over a bundle can never be taken for
// one over anything else, nor for another container's or host's bundle.
//
// `tarSha256` covers the raw tar bytes from the first header up to the
// signature entry's header: every header, every byte of data and padding of
// every entry, manifest.json first. Only signature.json itself and the tar's
// end-of-archive blocks after it are outside it.
#pragma once

#include <cstdint>
#include <deque>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "agent/bundle.h"
#include "common/hash-stream.h"
#include "common/signing.h"

namespace migrate {

namespace fs = std::filesystem;

struct BundleSignature {
  int formatVersion = kBundleFormatVersion;
  std::string algorithm = "ed25519";
  std::string signer;  // public key, 32 raw bytes
  std::string sourceHost;
  std::string containerName;
  std::string containerId;
  std::string tarSha256;  // hex
  std::string signature;  // 64 raw bytes

  // What `signature` signs.
  std::string statement() const;
  nlohmann::json toJson() const;
  // signature.json as the writer makes it; a reader accepts only this text,
  // so that no byte of it can change either (e.g. a hex digit's case).
  std::string text() const;
  // Throws Error(InvalidInput, "bundle signature: ...") naming the bad field.
  static BundleSignature fromJson(const nlohmann::json& json);
};

BundleSignature signBundle(const SigningKey& key, const BundleManifest& manifest, const std::string& tarSha256);

// The reader's view of the raw tar bytes: it sees each chunk as libarchive
// gets it, and, when libarchive reports where the signature entry's header
// began, gives the digest of everything before. libarchive reads ahead, so
// the last few MiB are kept back unhashed until it is known where the cut is.
// TODO(perf): one more SHA-256 pass over the uncompressed tar on each side
// (~0.7 s per GiB on this machine's shared cores, on the streaming thread);
// measure with bench.sh, move to a helper thread if it shows in downtime.
class TarDigestTap {
 public:
  void add(const char* data, size_t size);
  // Hex SHA-256 of the first `offset` bytes; afterwards the tap stops.
  // Throws Error(InvalidInput) if `offset` lies in bytes already hashed (a
  // header longer than what is kept back).
  std::string digestBefore(uint64_t offset);

 private:
  Sha256 hash_;
  uint64_t hashedEnd_ = 0;
  std::deque<std::string> recent_;  // the bytes from hashedEnd_ on
  size_t recentBytes_ = 0;
  bool stopped_ = false;
};

// What readBundle found: the signature entry's text (none: unsigned) and the
// digest of the tar bytes before it, for checkBundleSignature.
struct ReadSignature {
  std::optional<std::string> text;
  std::string tarSha256;
};

// Whom a target believes.
struct BundleTrust {
  struct Key {
    std::string publicKey;  // 32 raw bytes
    std::string label;      // where the trust comes from, for messages and logs
  };
  std::vector<Key> keys;
  // --trust-unsigned: an unsigned bundle, or one signed by a key not in
  // `keys`, is accepted. A signature that does not verify, or does not match
  // the bundle's bytes or manifest, is refused all the same.
  bool acceptUnsigned = false;
  // Appended to the refusal of an unsigned bundle or an unknown signer: what
  // the user can do about it.
  std::string refusalHint;

  // Over the network: exactly the key the coordinator has for `sourceHost`.
  static BundleTrust onlyKey(const std::string& publicKey, const std::string& sourceHost);
  // For `restore --import FILE`: this agent's own key, every
  // `<stateDir>/trusted-signers/*.pub`, and `extraKeyFiles`.
  static BundleTrust local(const fs::path& stateDir, const std::string& ownPublicKey,
                           const std::vector<fs::path>& extraKeyFiles, bool acceptUnsigned);
};

// Throws Error(InvalidInput, "bundle signature: ...") unless the bundle is
// signed, intact and by a trusted key (or acceptUnsigned allows an unsigned
// bundle or an unknown signer). Returns a line for the log saying who signed.
std::string checkBundleSignature(const ReadSignature& read, const BundleManifest& manifest, const BundleTrust& trust);

// The directory of keys a local import trusts besides the agent's own.
fs::path trustedSignersDir(const fs::path& stateDir);
// Reads a .pub file: its first word is the key text (ed25519:<hex>).
std::string readPublicKeyFile(const fs::path& path);

}  // namespace migrate
