#include "common/hash-stream.h"

#include <fcntl.h>
#include <openssl/evp.h>

#include <new>
#include <vector>

#include "common/error.h"
#include "common/files.h"
#include "common/syscall.h"

namespace migrate {

namespace {

void check(int ok, const char* what) {
  if (ok != 1) fail(std::string("sha256: ") + what + " failed");
}

}  // namespace

Sha256::Sha256() : ctx_(EVP_MD_CTX_new()) {
  if (!ctx_) throw std::bad_alloc();
  if (EVP_DigestInit_ex(ctx_, EVP_sha256(), nullptr) != 1) {
    EVP_MD_CTX_free(ctx_);
    fail("sha256: init failed");
  }
}

Sha256::~Sha256() { EVP_MD_CTX_free(ctx_); }

void Sha256::update(const void* data, size_t size) {
  if (size > 0) check(EVP_DigestUpdate(ctx_, data, size), "update");
}

std::string Sha256::hexDigest() const {
  // Finalise a copy so the running hash stays usable.
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> copy(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
  if (!copy) throw std::bad_alloc();
  check(EVP_MD_CTX_copy_ex(copy.get(), ctx_), "copy");
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  check(EVP_DigestFinal_ex(copy.get(), digest, &length), "final");
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex;
  hex.reserve(length * 2);
  for (unsigned int i = 0; i < length; ++i) {
    hex += kHex[digest[i] >> 4];
    hex += kHex[digest[i] & 0xf];
  }
  return hex;
}

void Sha256OutputStream::write(const void* data, size_t size) {
  inner_.write(data, size);
  hash_.update(data, size);
}

size_t Sha256InputStream::read(void* buffer, size_t size) {
  size_t n = inner_.read(buffer, size);
  hash_.update(buffer, n);
  return n;
}

std::string sha256Hex(std::string_view data) {
  Sha256 hash;
  hash.update(data.data(), data.size());
  return hash.hexDigest();
}

std::string sha256FileHex(const std::filesystem::path& path) {
  Fd fd = openOrFail(path, O_RDONLY);
  Sha256 hash;
  std::vector<char> buffer(1 << 20);
  for (;;) {
    auto n = SYSCALL(::read(fd.get(), buffer.data(), buffer.size()), "read", path.string());
    if (n == 0) break;
    hash.update(buffer.data(), static_cast<size_t>(n));
  }
  return hash.hexDigest();
}

}  // namespace migrate
