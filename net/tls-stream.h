// The data plane's encryption: TLS 1.3 between two agents, keyed by a one-time
// pre-shared key the coordinator hands both sides for one migration.
//
// External PSK with (EC)DHE (psk_dhe_ke): no certificates to manage, mutual
// authentication by knowledge of the key, and forward secrecy because the
// traffic keys also depend on an ephemeral X25519/ECDHE exchange. The PSK-only
// mode (psk_ke) is not allowed, and neither side accepts a certificate-based
// handshake: a peer without the key cannot complete one in either direction.
//
// TLS 1.3 closes each direction separately, so after the sender's
// close_notify the receiver can still answer on the same stream (for example
// with the digest it computed) before closing its own side.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "common/fd.h"
#include "common/stream.h"

namespace migrate {

// How long a read or write may block before the stream is declared dead.
constexpr std::chrono::milliseconds kDefaultTlsIoTimeout = std::chrono::minutes(2);

// 32 random bytes from OpenSSL's CSPRNG, for PrepareReceive.psk.
std::vector<uint8_t> generatePsk();

class TlsStream {
 public:
  // Client side. `psk` is 16..48 bytes (TLS_AES_256_GCM_SHA384 takes at most
  // a 48-byte key); `pskIdentity` is sent in clear (use the migration id).
  // Throws Error(InvalidInput) if the peer rejects the key or identity,
  // Error(Disconnected) if the connection breaks during the handshake.
  static TlsStream connect(Fd sock, const std::string& pskIdentity, std::span<const uint8_t> psk,
                           std::chrono::milliseconds ioTimeout = kDefaultTlsIoTimeout);
  // Server side; same errors, including a client offering another identity.
  static TlsStream accept(Fd sock, const std::string& pskIdentity, std::span<const uint8_t> psk,
                          std::chrono::milliseconds ioTimeout = kDefaultTlsIoTimeout);

  TlsStream(TlsStream&&) noexcept;
  TlsStream& operator=(TlsStream&&) noexcept;
  ~TlsStream();

  // Up to `size` bytes (one TLS record at most); 0 once the peer sent
  // close_notify. A connection that ends without close_notify throws
  // Error(Disconnected, "... (truncated)"): a cut stream must never look like
  // a complete one.
  size_t read(void* buffer, size_t size);
  // Writes all of `data` or throws (Disconnected on reset or timeout).
  void write(const void* data, size_t size);
  // Sends close_notify; the stream stays readable. Idempotent.
  void shutdownWrite();

  // Decrypted bytes buffered inside TLS that read() returns without touching
  // the socket (so a poll() on fd() would not show them).
  size_t pending() const;

  // "198.19.0.12:41234"; for messages.
  const std::string& peer() const;
  int fd() const;

 // Public only so the OpenSSL callbacks in the .cpp can name it; opaque.
  struct Impl;

 private:
  explicit TlsStream(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Decorators over a TlsStream (borrowed).
class TlsOutputStream final : public OutputStream {
 public:
  explicit TlsOutputStream(TlsStream& stream) : stream_(stream) {}
  void write(const void* data, size_t size) override { stream_.write(data, size); }
  // Sends close_notify: the receiver's read then returns 0.
  void finish() override { stream_.shutdownWrite(); }

 private:
  TlsStream& stream_;
};

class TlsInputStream final : public InputStream {
 public:
  explicit TlsInputStream(TlsStream& stream) : stream_(stream) {}
  size_t read(void* buffer, size_t size) override { return stream_.read(buffer, size); }

 private:
  TlsStream& stream_;
};

}  // namespace migrate
