// A byte pump between a TLS stream and a plain local socket: how the
// post-copy page channel crosses hosts encrypted. CRIU's page server (source)
// and its lazy-pages daemon (target) speak plain TCP on loopback; each agent
// pumps that connection through one TLS 1.3 stream between them.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>

#include "net/tls-stream.h"

namespace migrate {

// Bytes moved so far, readable from other threads.
struct PumpCounters {
  std::atomic<uint64_t> toTls{0};    // read from the socket, sent over TLS
  std::atomic<uint64_t> fromTls{0};  // received over TLS, written to the socket
};

// Copies both ways until both directions ended: socket EOF is passed on as
// close_notify, close_notify as shutdown(SHUT_WR). Returns early (without
// error) once `stop` is set. Throws on I/O errors and on a TLS stream cut
// without close_notify (Disconnected). `fromTls`, if given, counts the bytes
// received over TLS as they move (another thread may read it for progress).
//
// `socketEofIsClean`, if given, is asked when the socket reaches EOF: false
// means the local program ended by failing, and the pump then throws
// (Failed) instead of sending close_notify, so the caller can drop the
// connection and the peer sees a cut stream, never a clean end.
void pumpTls(TlsStream& tls, int socketFd, const std::atomic<bool>& stop, PumpCounters* counters = nullptr,
             const std::function<bool()>& socketEofIsClean = {});

}  // namespace migrate
