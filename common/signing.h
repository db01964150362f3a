// Ed25519 signing keys (OpenSSL EVP): each agent signs the bundles it writes
// with its own key, and a target verifies them against a public key it got
// from a source it trusts (the coordinator, or its own trusted-signers/).
//
// A public key is 32 raw bytes; as text it is "ed25519:" + 64 lowercase hex
// digits (publicKeyText), the form `migrate-agent signing-key` prints and a
// trusted-signers/*.pub file holds.
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <string_view>

typedef struct evp_pkey_st EVP_PKEY;

namespace migrate {

constexpr size_t kEd25519PublicKeyBytes = 32;
constexpr size_t kEd25519SignatureBytes = 64;

class SigningKey {
 public:
  // Reads the PEM (PKCS#8) private key at `path`; if there is none, makes a
  // new key pair and writes it there, mode 0600 (two processes racing for
  // the first start end up with the same key: the loser reads the winner's).
  // Throws Error(InvalidInput) for a file that is not an Ed25519 key, or
  // whose mode lets anyone but the owner read it.
  static SigningKey loadOrCreate(const std::filesystem::path& path);
  static SigningKey generate();

  SigningKey(SigningKey&&) noexcept;
  SigningKey& operator=(SigningKey&&) noexcept;
  ~SigningKey();

  std::string publicKey() const;  // 32 raw bytes
  std::string sign(std::string_view message) const;  // 64 raw bytes
  std::string privatePem() const;

 private:
  explicit SigningKey(EVP_PKEY* key);
  EVP_PKEY* key_;
};

// True only if `signature` is a valid Ed25519 signature of `message` by
// `publicKey` (32 raw bytes); false for a malformed key or signature.
bool verifySignature(std::string_view publicKey, std::string_view message, std::string_view signature);

std::string publicKeyText(std::string_view publicKey);
// Parses "ed25519:<64 hex>" (surrounding whitespace allowed). Throws
// Error(InvalidInput) naming what is wrong.
std::string parsePublicKeyText(std::string_view text);

std::string toHex(std::string_view bytes);
// Throws Error(InvalidInput) unless `hex` is an even number of hex digits.
std::string fromHex(std::string_view hex);

}  // namespace migrate
