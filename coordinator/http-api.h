// The coordinator's HTTP API (cpp-httplib): JSON over TCP and/or a unix
// socket, every request authenticated with a bearer token. Errors map to
// status codes by kind (InvalidInput 400, NotFound 404, Conflict 409,
// Overloaded 503, Disconnected 502, else 500) with body {error, kind}; the
// transport's limits (HttpServer) answer 408, 413, 415, 429 and 431 alike.
//
// TCP serves HTTPS: the bearer token must not cross the fabric in clear, and
// any host on the fabric can reach the port. Plain HTTP on TCP only when the
// operator asks for it (insecureHttp, e.g. behind a TLS-terminating proxy on
// the same host); the unix socket stays plain, guarded by its file mode.
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "common/error.h"
#include "coordinator/coordinator.h"
#include "coordinator/http-server.h"

namespace migrate {

struct HttpApiOptions {
  std::optional<std::string> tcpAddress;            // "198.19.0.1:8080"; port 0 picks one (tests).
  std::optional<std::filesystem::path> unixSocket;  // Created 0660, replacing a stale socket.
  std::string token;                                // Bearer token every request must carry.
  std::optional<TlsFiles> tls;                      // HTTPS on tcpAddress.
  bool insecureHttp = false;                        // Plain HTTP on tcpAddress (no tls).
  HttpLimits limits;                                // Both listeners.
};

int httpStatusFor(ErrorKind kind);

// Reads a token file: surrounding whitespace trimmed; refuses an empty one.
std::string loadToken(const std::filesystem::path& path);

// A request body as a JSON object. Error(InvalidInput) naming the rule for
// anything else, and for nesting deeper than `maxDepth`, which is checked
// before parsing so that a deep body costs no memory.
nlohmann::json parseJsonBody(const std::string& body, size_t maxDepth);

class HttpApi {
 public:
  HttpApi(Coordinator& coordinator, HttpApiOptions options);
  ~HttpApi();
  HttpApi(const HttpApi&) = delete;
  HttpApi& operator=(const HttpApi&) = delete;

  // Binds (throws Error naming the address on failure) and serves on
  // threads. Refuses a TCP address with neither tls nor insecureHttp.
  void start();
  void stop();
  // The bound TCP port; 0 without TCP.
  int tcpPort() const { return tcpPort_; }
  // The TCP server's connections (none without TCP).
  HttpServer::Occupancy tcpOccupancy() { return tcp_ ? tcp_->occupancy() : HttpServer::Occupancy{}; }

 private:
  void routes(HttpServer& server);

  Coordinator& coordinator_;
  HttpApiOptions options_;
  std::unique_ptr<HttpServer> tcp_;
  std::unique_ptr<HttpServer> unix_;
  std::thread tcpThread_;
  std::thread unixThread_;
  int tcpPort_ = 0;
};

}  // namespace migrate
