// CURVE key pairs of the control plane (ZeroMQ CURVE, RFC 26/CurveZMQ).
//
// Keys are kept as Z85 text, 40 characters, the form zmq_setsockopt and
// `zmq_curve_keypair` use. On disk, `<name>.key` holds the secret key (mode
// 0600, refused if group/other can read it, like ssh) and `<name>.pub` the
// public key, which is what gets copied to the other side: the coordinator's
// allow-list of agents, and each agent's pinned coordinator key.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>

namespace migrate {

namespace fs = std::filesystem;

struct CurveKeyPair {
  std::string publicKey;  // Z85, 40 chars.
  std::string secretKey;  // Z85, 40 chars.
};

CurveKeyPair generateCurveKeyPair();

// Writes dir/name.key (0600) and dir/name.pub (0644) atomically.
void saveKeyPair(const fs::path& dir, std::string_view name, const CurveKeyPair& keys);

// Reads dir/name.key and dir/name.pub; checks that the public key belongs to
// the secret one (a swapped .pub would otherwise surface as a handshake that
// silently never completes).
CurveKeyPair loadKeyPair(const fs::path& dir, std::string_view name);

// Reads one Z85 public key from a file (surrounding whitespace ignored).
std::string loadPublicKey(const fs::path& file);

// Throws Error(InvalidInput) naming `what` unless `key` is 40 valid Z85 chars.
void checkCurveKey(std::string_view key, std::string_view what);

}  // namespace migrate
