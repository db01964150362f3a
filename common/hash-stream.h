// SHA-256 as stream decorators: the source hashes the bundle bytes as they
// leave, the target as they arrive, and the two digests are compared before
// restore (DESIGN.md step 4).
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <string_view>

#include "common/stream.h"

typedef struct evp_md_ctx_st EVP_MD_CTX;

namespace migrate {

// Incremental SHA-256 (OpenSSL EVP).
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void update(const void* data, size_t size);
  // Lowercase hex digest of everything so far; updating afterwards continues
  // the same running hash.
  std::string hexDigest() const;

 private:
  EVP_MD_CTX* ctx_;
};

class Sha256OutputStream final : public OutputStream {
 public:
  explicit Sha256OutputStream(OutputStream& inner) : inner_(inner) {}
  void write(const void* data, size_t size) override;
  void finish() override { inner_.finish(); }
  // Digest of the bytes written so far; call after finish() for the whole stream.
  std::string hexDigest() const { return hash_.hexDigest(); }

 private:
  OutputStream& inner_;
  Sha256 hash_;
};

class Sha256InputStream final : public InputStream {
 public:
  explicit Sha256InputStream(InputStream& inner) : inner_(inner) {}
  size_t read(void* buffer, size_t size) override;
  // Digest of the bytes read so far; read to end of stream first for the whole.
  std::string hexDigest() const { return hash_.hexDigest(); }

 private:
  InputStream& inner_;
  Sha256 hash_;
};

std::string sha256Hex(std::string_view data);
std::string sha256FileHex(const std::filesystem::path& path);

}  // namespace migrate
