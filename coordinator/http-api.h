// The coordinator's HTTP API (cpp-httplib): JSON over TCP and/or a unix
// socket, every request authenticated with a bearer token. Errors map to
// status codes by kind (InvalidInput 400, NotFound 404, Conflict 409,
// Overloaded 503, Disconnected 502, else 500) with body {error, kind}.
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "common/error.h"
#include "coordinator/coordinator.h"

namespace migrate {

struct HttpApiOptions {
  std::optional<std::string> tcpAddress;            // "198.19.0.1:8080"; port 0 picks one (tests).
  std::optional<std::filesystem::path> unixSocket;  // Created 0660, replacing a stale socket.
  std::string token;                                // Bearer token every request must carry.
};

int httpStatusFor(ErrorKind kind);

// Reads a token file: surrounding whitespace trimmed; refuses an empty one.
std::string loadToken(const std::filesystem::path& path);

class HttpApi {
 public:
  HttpApi(Coordinator& coordinator, HttpApiOptions options);
  ~HttpApi();
  HttpApi(const HttpApi&) = delete;
  HttpApi& operator=(const HttpApi&) = delete;

  // Binds (throws Error naming the address on failure) and serves on threads.
  void start();
  void stop();
  // The bound TCP port; 0 without TCP.
  int tcpPort() const { return tcpPort_; }

 private:
  class Server;
  void routes(Server& server);

  Coordinator& coordinator_;
  HttpApiOptions options_;
  std::unique_ptr<Server> tcp_;
  std::unique_ptr<Server> unix_;
  std::thread tcpThread_;
  std::thread unixThread_;
  int tcpPort_ = 0;
};

}  // namespace migrate
