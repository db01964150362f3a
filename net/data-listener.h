// Plain TCP for the data plane: the target's one-time receiver and the
// source's connect. TLS (tls-stream.h) runs on top.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>

#include "common/fd.h"

namespace migrate {

// A listening socket on an ephemeral port for exactly one incoming stream
// (DESIGN.md step 2: "opens a receiver for this one migration").
class DataListener {
 public:
  // `bindAddress` is a numeric IPv4/IPv6 address (198.19.0.12, 127.0.0.1, ::1).
  explicit DataListener(std::string bindAddress);

  uint16_t port() const { return port_; }
  const std::string& address() const { return address_; }

  // Waits for the sender. Throws Error(Disconnected) if nobody connects within
  // `timeout`. Authentication is TLS's job: whoever connects first gets the
  // socket, and a stranger fails the PSK handshake.
  Fd acceptOne(std::chrono::milliseconds timeout);
  // The same, but gives up with Error(Failed) soon after `stop` becomes true
  // (it waits in short slices): for receivers an abort must reach.
  Fd acceptOne(std::chrono::milliseconds timeout, const std::atomic<bool>& stop);

 private:
  std::string address_;
  Fd fd_;
  uint16_t port_ = 0;
};

// Connects to host:port (numeric address) within `timeout`; Error(Disconnected)
// on refusal or timeout. The returned socket is blocking.
Fd connectTcp(const std::string& host, uint16_t port, std::chrono::milliseconds timeout);

// "198.19.0.12:41234" ("[::1]:41234") of the socket's peer; "unknown peer" if
// it cannot be told. For error messages.
std::string socketPeerName(int fd);

}  // namespace migrate
