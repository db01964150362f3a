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

#include <atomic>
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
// How long a receiver gives each connection to prove the key: a TLS 1.3 PSK
// handshake is one round trip and two X25519 operations, milliseconds even
// across a slow fabric; a peer that has not finished by then (silent, slow,
// or speaking something else) is a stranger and is dropped.
constexpr std::chrono::milliseconds kTlsHandshakeTimeout = std::chrono::seconds(5);

struct TlsOptions {
  // A read or write that makes no progress this long fails (Disconnected).
  std::chrono::milliseconds ioTimeout = kDefaultTlsIoTimeout;
  // The whole handshake, however its bytes trickle in.
  std::chrono::milliseconds handshakeTimeout = kDefaultTlsIoTimeout;
  // Borrowed, must outlive the stream. Once true, a blocked handshake, read or
  // write gives up within a fraction of a second with Error(Failed,
  // "... stopped"): how another thread stops this one without touching its
  // socket (no fd number crosses threads).
  const std::atomic<bool>* stop = nullptr;
};

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
  static TlsStream connect(Fd sock, const std::string& pskIdentity, std::span<const uint8_t> psk,
                           const TlsOptions& options);
  // Server side; same errors, including a client offering another identity.
  // A receiver that may see strangers uses DataListener::acceptTls instead.
  static TlsStream accept(Fd sock, const std::string& pskIdentity, std::span<const uint8_t> psk,
                          std::chrono::milliseconds ioTimeout = kDefaultTlsIoTimeout);
  static TlsStream accept(Fd sock, const std::string& pskIdentity, std::span<const uint8_t> psk,
                          const TlsOptions& options);

  TlsStream(TlsStream&&) noexcept;
  TlsStream& operator=(TlsStream&&) noexcept;
  ~TlsStream();

  // Up to `size` bytes (one TLS record at most); 0 once the peer sent
  // close_notify. A connection that ends without close_notify throws
  // Error(Disconnected, "... (truncated)"): a cut stream must never look like
  // a complete one.
  size_t read(void* buffer, size_t size);
  // Reads until `size` bytes are in or the peer sent close_notify; returns
  // how many arrived (less than `size` only at that end).
  size_t readFully(void* buffer, size_t size);
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
  friend class TlsHandshake;
  explicit TlsStream(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// A server handshake that never blocks, so that one thread can carry several
// at once in its poll loop (DataListener::acceptTls) and a stranger that says
// nothing holds up nobody. The socket's bytes are read and written with
// MSG_DONTWAIT; the caller polls fd() for the events advance() asks for and
// owns the deadline.
class TlsHandshake {
 public:
  static TlsHandshake accept(Fd sock, const std::string& pskIdentity, std::span<const uint8_t> psk,
                             const TlsOptions& options);
  TlsHandshake(TlsHandshake&&) noexcept;
  TlsHandshake& operator=(TlsHandshake&&) noexcept;
  ~TlsHandshake();

  // Moves the handshake on with what the socket holds. Returns the poll
  // events to wait for before calling again (POLLIN, POLLOUT), or 0 once it
  // completed. Throws as TlsStream::accept does when the peer fails it.
  short advance();
  // After advance() returned 0: the stream, blocking from now on (with the
  // options' ioTimeout and stop).
  TlsStream finish() &&;

  int fd() const;
  const std::string& peer() const;

 private:
  explicit TlsHandshake(std::unique_ptr<TlsStream::Impl> impl);
  std::unique_ptr<TlsStream::Impl> impl_;
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
