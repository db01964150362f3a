// Plain TCP for the data plane: the target's one-time receiver and the
// source's connect. TLS (tls-stream.h) runs on top.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <span>
#include <string>

#include "common/fd.h"
#include "net/tls-stream.h"

namespace migrate {

// Connections a receiver carries at once before they proved the key. Each
// costs an fd and a few KiB of OpenSSL state for at most its handshake
// bound; past this, the oldest makes room for the newest, so a flood can
// neither exhaust fds nor keep the sender in the kernel's backlog.
constexpr size_t kMaxPendingHandshakes = 16;
// ... and from one address: past it, that address's oldest makes room.
constexpr size_t kMaxPendingHandshakesPerPeer = 4;

struct TlsAcceptOptions {
  std::chrono::milliseconds handshakeTimeout = kTlsHandshakeTimeout;  // per connection
  size_t maxPending = kMaxPendingHandshakes;
  size_t maxPendingPerPeer = kMaxPendingHandshakesPerPeer;
  std::chrono::milliseconds ioTimeout = kDefaultTlsIoTimeout;  // of the stream returned
};

// A listening socket on an ephemeral port for one migration's streams
// (DESIGN.md step 2: "opens a receiver for this one migration"). Anyone on
// the fabric can reach it; only a connection that completes the TLS PSK
// handshake counts (acceptTls).
class DataListener {
 public:
  // `bindAddress` is a numeric IPv4/IPv6 address (198.19.0.12, 127.0.0.1, ::1).
  explicit DataListener(std::string bindAddress);
  // A listening socket another process made and handed over (the post-copy
  // page relay takes over its receiver's, so the source reconnects to the
  // port it already knows).
  DataListener(Fd listening, std::string bindAddress);

  // For handing the socket to a child process; still ours.
  int fd() const { return fd_.get(); }

  uint16_t port() const { return port_; }
  const std::string& address() const { return address_; }

  // The first connection that completes a TLS 1.3 handshake with `psk` for
  // `pskIdentity`, as a stream whose reads and writes also give up on `stop`
  // (borrowed: it must outlive the stream). Connections are taken as they
  // come and their handshakes carried side by side, so a stranger connecting
  // first, or at the same time, delays nobody: one that fails the handshake
  // (garbage, wrong key or identity) or has not finished it within
  // `options.handshakeTimeout` (silent) is closed and logged. Throws
  // Error(Disconnected) if no connection authenticated within `timeout`,
  // Error(Failed) soon after `stop` becomes true.
  TlsStream acceptTls(const std::string& pskIdentity, std::span<const uint8_t> psk, std::chrono::milliseconds timeout,
                      const std::atomic<bool>& stop, const TlsAcceptOptions& options = {});

  // Plain TCP, for loopback peers that need no authentication (CRIU's
  // lazy-pages daemon). Waits for the first connection. Throws
  // Error(Disconnected) if nobody connects within `timeout`.
  Fd acceptOne(std::chrono::milliseconds timeout);
  // The same, but gives up with Error(Failed) soon after `stop` becomes true
  // (it waits in short slices): for receivers an abort must reach.
  Fd acceptOne(std::chrono::milliseconds timeout, const std::atomic<bool>& stop);

 private:
  static uint16_t boundPort(int fd);
  std::string where() const;
  // The next queued connection, or nothing (the listener is non-blocking: a
  // connection reset between poll and accept leaves nothing to take).
  Fd tryAccept();

  std::string address_;
  Fd fd_;
  uint16_t port_ = 0;
};

// Connects to host:port (numeric address) within `timeout`; Error(Disconnected)
// on refusal or timeout. The returned socket is blocking.
Fd connectTcp(const std::string& host, uint16_t port, std::chrono::milliseconds timeout);

// A loopback port for a program that binds it itself (CRIU's page server
// takes only a number): free when tested, and below the kernel's ephemeral
// range (ip_local_port_range), so no outgoing connection is given it
// meanwhile. Only a process binding that very port on purpose can still take
// it first; the program's bind then fails, and with it its start, cleanly.
uint16_t pickLoopbackPort();

// "198.19.0.12:41234" ("[::1]:41234") of the socket's peer; "unknown peer" if
// it cannot be told. For error messages.
std::string socketPeerName(int fd);

}  // namespace migrate
