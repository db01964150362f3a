// The HTTP API's transport: cpp-httplib parses requests and routes them; this
// server owns each connection around that, so every connection is bounded.
//
// httplib 0.11 bounds only each single recv() (its read timeout), so a
// client sending one header line every 4 s holds a worker forever, and its
// fixed pool of workers (8 here) is then all held by 8 such clients. It has no
// deadline, connection-count or header-size hook, but its per-connection step
// process_and_close_socket() is virtual, and process_request() (parse one
// request, route it, write the answer) takes any httplib::Stream. So this
// class overrides the connection step instead of putting a proxy in front:
// it counts the connection against the caps, does the TLS handshake itself
// (OpenSSL, non-blocking, with a deadline), and hands httplib a Stream whose
// reads share one deadline per request and count the header and body bytes.
// A request that breaks a limit gets the server's own answer (408, 413, 429,
// 431) naming the limit; the worker pool is larger than the connection cap, so
// a refusal never waits for a worker that an admitted connection holds;
// workers start on demand, up to that size.
#pragma once

#include <httplib.h>
#include <openssl/ssl.h>

#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "common/fd.h"

namespace migrate {

struct HttpLimits {
  // A request (request line, headers, body) must arrive whole within this
  // long of the server starting to wait for it, however the client paces its
  // bytes (408); a keep-alive connection idle that long is closed, and a TLS
  // handshake must complete within it too.
  std::chrono::milliseconds requestTimeout = std::chrono::seconds(5);
  // Writing one response, whatever pace the client reads at.
  std::chrono::milliseconds responseTimeout = std::chrono::seconds(10);
  size_t maxHeaderBytes = 64 * 1024;  // Request line and headers (431).
  size_t maxBodyBytes = 1 << 20;      // As declared or as sent (413).
  size_t maxJsonDepth = 64;           // Nesting of a JSON body; the API's parser checks it (400).
  int maxConnectionsPerClient = 64;   // Per IP address, or per uid on the unix socket (429).
  int maxConnections = 256;           // Open at once in all (429).
  // A connection over a cap waits this long for a slot before its 429, so a
  // burst of short requests (200 at once from one client) is served, while
  // connections that hold their slots (each at most requestTimeout per
  // request) are refused soon.
  std::chrono::milliseconds admissionWait = std::chrono::seconds(1);
  int maxRequestsPerConnection = 100; // Keep-alive requests before the server closes.
};

struct TlsFiles {
  std::filesystem::path certificate;  // PEM, the server's certificate first, then intermediates.
  std::filesystem::path privateKey;   // PEM.
};

// "413 Payload Too Large" and so on; "Unknown" for codes it does not list.
std::string_view httpReasonPhrase(int status);

class HttpServer : public httplib::Server {
 public:
  // `tls` null: plain HTTP. Throws Error(InvalidInput) naming the file when
  // the certificate or key cannot be loaded or do not match.
  HttpServer(HttpLimits limits, const TlsFiles* tls);
  ~HttpServer() override;

  const HttpLimits& limits() const { return limits_; }

  // httplib 0.11 binds TCP only; its accept loop serves whatever listening
  // socket it holds, so the unix socket is bound elsewhere and handed over.
  void adoptListeningSocket(Fd fd);

  // Stops accepting and ends every open connection at its next wait (not
  // after its timeouts), then httplib's stop(); listen_after_bind() returns
  // once the workers are joined. Idempotent.
  void stopServing();

  // Connections admitted and not yet closed, and those waiting in admit()
  // for a slot: what a test waits on instead of sleeping.
  struct Occupancy {
    int open = 0;
    int waiting = 0;
  };
  Occupancy occupancy();

 private:
  class Connection;
  class RequestStream;
  class Slot;

  bool process_and_close_socket(socket_t sock) override;
  void serve(Connection& connection);
  // nullopt: admitted (release() when done); else why not, naming the cap.
  // Waits up to limits_.admissionWait for a slot.
  std::optional<std::string> admit(const std::string& client);
  void release(const std::string& client);

  HttpLimits limits_;
  std::unique_ptr<SSL_CTX, void (*)(SSL_CTX*)> tls_;
  Fd stopEvent_;  // eventfd, readable once stopping; every connection's poll() watches it.

  std::mutex mutex_;  // guards perClient_, total_ and waiting_
  std::condition_variable slotFreed_;
  std::map<std::string, int> perClient_;
  int total_ = 0;
  int waiting_ = 0;  // In admit(), for a slot.
};

}  // namespace migrate
