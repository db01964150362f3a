#include "common/signing.h"

#include <fcntl.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <sys/stat.h>
#include <unistd.h>

#include <new>

#include "common/error.h"
#include "common/files.h"
#include "common/syscall.h"

namespace migrate {

namespace {

constexpr std::string_view kKeyTextPrefix = "ed25519:";

using PkeyCtx = std::unique_ptr<EVP_PKEY_CTX, decltype(&EVP_PKEY_CTX_free)>;
using MdCtx = std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)>;
using Bio = std::unique_ptr<BIO, decltype(&BIO_free)>;

void check(int ok, const char* what) {
  if (ok != 1) fail(std::string("ed25519: ") + what + " failed");
}

MdCtx newMdCtx() {
  MdCtx ctx(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
  if (!ctx) throw std::bad_alloc();
  return ctx;
}

EVP_PKEY* parsePem(const std::string& pem, const std::filesystem::path& path) {
  Bio bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())), &BIO_free);
  if (!bio) throw std::bad_alloc();
  EVP_PKEY* key = PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr);
  if (!key) fail(ErrorKind::InvalidInput, "signing key " + path.string() + ": not a PEM private key");
  if (EVP_PKEY_id(key) != EVP_PKEY_ED25519) {
    EVP_PKEY_free(key);
    fail(ErrorKind::InvalidInput, "signing key " + path.string() + ": not an Ed25519 key");
  }
  return key;
}

}  // namespace

SigningKey::SigningKey(EVP_PKEY* key) : key_(key) {}
SigningKey::SigningKey(SigningKey&& other) noexcept : key_(std::exchange(other.key_, nullptr)) {}
SigningKey& SigningKey::operator=(SigningKey&& other) noexcept {
  if (this != &other) {
    EVP_PKEY_free(key_);
    key_ = std::exchange(other.key_, nullptr);
  }
  return *this;
}
SigningKey::~SigningKey() { EVP_PKEY_free(key_); }

SigningKey SigningKey::generate() {
  PkeyCtx ctx(EVP_PKEY_CTX_new_id(EVP_PKEY_ED25519, nullptr), &EVP_PKEY_CTX_free);
  if (!ctx) throw std::bad_alloc();
  check(EVP_PKEY_keygen_init(ctx.get()), "keygen init");
  EVP_PKEY* key = nullptr;
  check(EVP_PKEY_keygen(ctx.get(), &key), "keygen");
  return SigningKey(key);
}

SigningKey SigningKey::loadOrCreate(const std::filesystem::path& path) {
  for (int attempt = 0; attempt < 2; ++attempt) {
    int raw = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (raw >= 0) {
      Fd fd(raw);
      struct stat st;
      SYSCALL(::fstat(fd.get(), &st), "fstat", path.string());
      if (!S_ISREG(st.st_mode) || (st.st_mode & 077) != 0) {
        fail(ErrorKind::InvalidInput, "signing key " + path.string() +
                                          " must be a regular file readable by its owner only (chmod 600)");
      }
      return SigningKey(parsePem(readFile(path), path));
    }
    if (errno != ENOENT) failErrno(errno, "open " + path.string());
    // First start: write the new key under a temporary name, then link() it
    // into place, which fails if another process got there first.
    SigningKey key = generate();
    std::filesystem::create_directories(path.parent_path());
    std::filesystem::path temp = path.string() + ".new-" + std::to_string(::getpid());
    {
      Fd fd(SYSCALL(::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600), "open",
                    temp.string()));
      std::string pem = key.privatePem();
      size_t done = 0;
      while (done < pem.size()) {
        done += static_cast<size_t>(SYSCALL(::write(fd.get(), pem.data() + done, pem.size() - done), "write"));
      }
      SYSCALL(::fsync(fd.get()), "fsync", temp.string());
    }
    int linked = ::link(temp.c_str(), path.c_str());
    int err = errno;
    ::unlink(temp.c_str());
    if (linked == 0) return key;
    if (err != EEXIST) failErrno(err, "link " + path.string());
  }
  fail("signing key " + path.string() + ": could neither read nor create it");
}

std::string SigningKey::publicKey() const {
  std::string out(kEd25519PublicKeyBytes, '\0');
  size_t length = out.size();
  check(EVP_PKEY_get_raw_public_key(key_, reinterpret_cast<unsigned char*>(out.data()), &length), "public key");
  out.resize(length);
  return out;
}

std::string SigningKey::sign(std::string_view message) const {
  MdCtx ctx = newMdCtx();
  // Ed25519 hashes internally (PureEdDSA): no digest is named.
  check(EVP_DigestSignInit(ctx.get(), nullptr, nullptr, nullptr, key_), "sign init");
  std::string out(kEd25519SignatureBytes, '\0');
  size_t length = out.size();
  check(EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char*>(out.data()), &length,
                       reinterpret_cast<const unsigned char*>(message.data()), message.size()),
        "sign");
  out.resize(length);
  return out;
}

std::string SigningKey::privatePem() const {
  Bio bio(BIO_new(BIO_s_mem()), &BIO_free);
  if (!bio) throw std::bad_alloc();
  check(PEM_write_bio_PrivateKey(bio.get(), key_, nullptr, nullptr, 0, nullptr, nullptr), "write PEM");
  char* data = nullptr;
  long size = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(size));
}

bool verifySignature(std::string_view publicKey, std::string_view message, std::string_view signature) {
  if (publicKey.size() != kEd25519PublicKeyBytes || signature.size() != kEd25519SignatureBytes) return false;
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key(
      EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, nullptr, reinterpret_cast<const unsigned char*>(publicKey.data()),
                                  publicKey.size()),
      &EVP_PKEY_free);
  if (!key) return false;
  MdCtx ctx = newMdCtx();
  if (EVP_DigestVerifyInit(ctx.get(), nullptr, nullptr, nullptr, key.get()) != 1) return false;
  return EVP_DigestVerify(ctx.get(), reinterpret_cast<const unsigned char*>(signature.data()), signature.size(),
                          reinterpret_cast<const unsigned char*>(message.data()), message.size()) == 1;
}

std::string toHex(std::string_view bytes) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex;
  hex.reserve(bytes.size() * 2);
  for (unsigned char c : bytes) {
    hex += kHex[c >> 4];
    hex += kHex[c & 0xf];
  }
  return hex;
}

std::string fromHex(std::string_view hex) {
  auto digit = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  if (hex.size() % 2 != 0) fail(ErrorKind::InvalidInput, "odd number of hex digits");
  std::string out(hex.size() / 2, '\0');
  for (size_t i = 0; i < out.size(); ++i) {
    int hi = digit(hex[2 * i]), lo = digit(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) fail(ErrorKind::InvalidInput, "not a hex digit");
    out[i] = static_cast<char>(hi << 4 | lo);
  }
  return out;
}

std::string publicKeyText(std::string_view publicKey) { return std::string(kKeyTextPrefix) + toHex(publicKey); }

std::string parsePublicKeyText(std::string_view text) {
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.front()))) text.remove_prefix(1);
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) text.remove_suffix(1);
  if (!text.starts_with(kKeyTextPrefix) || text.size() != kKeyTextPrefix.size() + 2 * kEd25519PublicKeyBytes) {
    fail(ErrorKind::InvalidInput, "not an Ed25519 public key (expected `ed25519:` and 64 hex digits)");
  }
  return fromHex(text.substr(kKeyTextPrefix.size()));
}

}  // namespace migrate
