#include "coordinator/http-api.h"

#include <httplib.h>
#include <netdb.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include "common/files.h"
#include "common/hash-stream.h"
#include "common/log.h"
#include "common/untrusted-json.h"
#include "common/syscall.h"

namespace migrate {

using nlohmann::json;

namespace {

std::string trim(std::string s) {
  auto first = s.find_first_not_of(" \t\r\n");
  auto last = s.find_last_not_of(" \t\r\n");
  return first == std::string::npos ? std::string() : s.substr(first, last - first + 1);
}

void sendJson(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(body.dump() + "\n", "application/json");
}

void sendError(httplib::Response& res, ErrorKind kind, const std::string& message) {
  sendJson(res, httpStatusFor(kind), {{"error", message}, {"kind", kindName(kind)}});
}


// POST /v1/containers `userns`: "auto" (a user namespace of its own, the
// default) or "host"; named as the CLI's --userns so that other modes
// (a given mapping) can be added without a second field.
bool usernsIsHost(const std::string& userns) {
  if (userns != "auto" && userns != "host") {
    fail(ErrorKind::InvalidInput, "field `userns` is `" + userns + "`, not `auto` or `host`");
  }
  return userns == "host";
}

// Token comparison in constant time: both sides are hashed first so their
// lengths do not leak through CRYPTO_memcmp's length requirement either.
bool tokenMatches(const std::string& presented, const std::string& expected) {
  std::string a = sha256Hex(presented), b = sha256Hex(expected);
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

using Handler = std::function<void(const httplib::Request&, httplib::Response&)>;

// Every handler's errors become {error, kind} with the kind's status.
Handler guarded(Handler handler) {
  return [handler = std::move(handler)](const httplib::Request& req, httplib::Response& res) {
    try {
      handler(req, res);
    } catch (const Error& e) {
      sendError(res, e.kind(), e.what());
    } catch (const json::exception& e) {
      sendError(res, ErrorKind::InvalidInput, std::string("bad JSON: ") + e.what());
    } catch (const std::exception& e) {
      sendError(res, ErrorKind::Failed, e.what());
    }
  };
}

// Bound here rather than by httplib, whose listen backlog of 5 drops the
// SYNs of a burst of connections (each then waits a 1 s retransmission)
// whenever its accept loop is a moment late.
Fd bindTcpSocket(const std::string& host, int port, int& boundPort) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  std::string where = host + ":" + std::to_string(port);
  if (int rc = ::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &found); rc != 0) {
    fail(ErrorKind::InvalidInput, "http: cannot resolve " + where + ": " + gai_strerror(rc));
  }
  std::unique_ptr<addrinfo, void (*)(addrinfo*)> owned(found, freeaddrinfo);
  Fd fd(SYSCALL(::socket(found->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0), "socket", where));
  int one = 1;
  SYSCALL(::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one), "setsockopt(SO_REUSEADDR)", where);
  if (::bind(fd.get(), found->ai_addr, found->ai_addrlen) != 0) {
    fail(ErrorKind::Conflict, "http: cannot bind " + where + ": " + std::strerror(errno));
  }
  SYSCALL(::listen(fd.get(), SOMAXCONN), "listen", where);
  sockaddr_storage bound{};
  socklen_t length = sizeof bound;
  SYSCALL(::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&bound), &length), "getsockname", where);
  boundPort = ntohs(bound.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                                                : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  return fd;
}

Fd bindUnixSocket(const std::filesystem::path& path) {
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  if (path.native().size() >= sizeof(address.sun_path)) {
    fail(ErrorKind::InvalidInput, "http: unix socket path too long: " + path.string());
  }
  std::strcpy(address.sun_path, path.c_str());
  struct stat st;
  // Replaces a socket a previous run left behind, never any other file.
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) fail(ErrorKind::Conflict, "http: " + path.string() + " exists and is not a socket");
    SYSCALL(::unlink(path.c_str()), "unlink", path.string());
  }
  std::error_code ignored;
  std::filesystem::create_directories(path.parent_path(), ignored);
  Fd fd(SYSCALL(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), "socket(AF_UNIX)"));
  SYSCALL(::bind(fd.get(), reinterpret_cast<sockaddr*>(&address), sizeof(address)), "bind", path.string());
  SYSCALL(::chmod(path.c_str(), 0660), "chmod", path.string());
  SYSCALL(::listen(fd.get(), SOMAXCONN), "listen", path.string());
  return fd;
}

}  // namespace

json parseJsonBody(const std::string& body, size_t maxDepth) {
  if (body.empty()) return json::object();
  json parsed = parseUntrustedJson(body, "request body", maxDepth);
  if (!parsed.is_object()) fail(ErrorKind::InvalidInput, "request body is not a JSON object");
  return parsed;
}

int httpStatusFor(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::InvalidInput: return 400;
    case ErrorKind::NotFound: return 404;
    case ErrorKind::Conflict: return 409;
    case ErrorKind::Cancelled: return 409;
    case ErrorKind::Overloaded: return 503;
    case ErrorKind::Disconnected: return 502;
    case ErrorKind::Unimplemented: return 501;
    case ErrorKind::Failed: return 500;
  }
  return 500;
}

std::string loadToken(const std::filesystem::path& path) {
  std::string token = trim(readFile(path));
  if (token.empty()) fail(ErrorKind::InvalidInput, "http: token file " + path.string() + " is empty");
  return token;
}

HttpApi::HttpApi(Coordinator& coordinator, HttpApiOptions options)
    : coordinator_(coordinator), options_(std::move(options)) {
  if (options_.token.empty()) fail(ErrorKind::InvalidInput, "http: a bearer token is required");
}

HttpApi::~HttpApi() { stop(); }

void HttpApi::start() {
  if (options_.tcpAddress) {
    auto colon = options_.tcpAddress->rfind(':');
    if (colon == std::string::npos) {
      fail(ErrorKind::InvalidInput, "http: address `" + *options_.tcpAddress + "` is not host:port");
    }
    std::string host = options_.tcpAddress->substr(0, colon);
    int port = std::atoi(options_.tcpAddress->c_str() + colon + 1);
    if (!options_.tls && !options_.insecureHttp) {
      fail(ErrorKind::InvalidInput, "http: " + *options_.tcpAddress +
                                        " would serve the API and its bearer token in clear; give a TLS "
                                        "certificate and key, or ask for plain HTTP explicitly");
    }
    tcp_ = std::make_unique<HttpServer>(options_.limits, options_.tls ? &*options_.tls : nullptr);
    routes(*tcp_);
    tcp_->adoptListeningSocket(bindTcpSocket(host, port, tcpPort_));
    tcpThread_ = std::thread([this] { tcp_->listen_after_bind(); });
    logInfo(std::string("http: listening on ") + (options_.tls ? "https://" : "http://") +
            options_.tcpAddress->substr(0, colon) + ":" + std::to_string(tcpPort_));
  }
  if (options_.unixSocket) {
    unix_ = std::make_unique<HttpServer>(options_.limits, nullptr);
    routes(*unix_);
    unix_->adoptListeningSocket(bindUnixSocket(*options_.unixSocket));
    unixThread_ = std::thread([this] { unix_->listen_after_bind(); });
    logInfo("http: listening on unix:" + options_.unixSocket->string());
  }
}

void HttpApi::stop() {
  auto stopServer = [](HttpServer* server, std::thread& thread) {
    if (!thread.joinable()) return;
    // stop() is a no-op until the accept loop has started; give it a moment.
    for (int i = 0; i < 2000 && !server->is_running(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    server->stopServing();
    thread.join();
  };
  stopServer(tcp_.get(), tcpThread_);
  stopServer(unix_.get(), unixThread_);
  if (unix_ && options_.unixSocket) {
    std::error_code ignored;
    std::filesystem::remove(*options_.unixSocket, ignored);
  }
  tcp_.reset();
  unix_.reset();
}

void HttpApi::routes(HttpServer& server) {
  server.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    std::string header = req.get_header_value("Authorization");
    constexpr std::string_view kBearer = "Bearer ";
    if (header.rfind(kBearer, 0) != 0 || !tokenMatches(header.substr(kBearer.size()), options_.token)) {
      res.set_header("WWW-Authenticate", "Bearer");
      sendJson(res, 401,
               {{"error", header.empty() ? "missing bearer token" : "wrong bearer token"}, {"kind", "unauthorized"}});
      return httplib::Server::HandlerResponse::Handled;
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });
  server.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    if (res.status == 404) {
      sendJson(res, 404, {{"error", "no such endpoint: " + req.method + " " + req.path}, {"kind", "not-found"}});
    } else {
      // httplib's own refusals (a malformed request line, 414, 416) carry no body.
      sendJson(res, res.status,
               {{"error", "http: " + std::string(httpReasonPhrase(res.status))},
                {"kind", res.status < 500 ? "invalid-input" : "failed"}});
    }
  });
  server.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      sendError(res, ErrorKind::Failed, e.what());
    } catch (...) {
      sendError(res, ErrorKind::Failed, "unknown error");
    }
  });

  Coordinator& c = coordinator_;
  auto parseBody = [depth = options_.limits.maxJsonDepth](const httplib::Request& req) {
    return parseJsonBody(req.body, depth);
  };

  server.Get("/v1/hosts", guarded([&c](const httplib::Request&, httplib::Response& res) {
               sendJson(res, 200, c.hosts());
             }));

  server.Get("/v1/containers", guarded([&c](const httplib::Request&, httplib::Response& res) {
               sendJson(res, 200, c.containers());
             }));

  server.Post("/v1/containers", guarded([&c, parseBody](const httplib::Request& req, httplib::Response& res) {
                json body = parseBody(req);
                RunContainerRequest r;
                r.host = jsonField<std::string>(body, "host", "");
                r.name = jsonField<std::string>(body, "name", "");
                r.image = jsonField<std::string>(body, "image", "");
                r.args = jsonField<std::vector<std::string>>(body, "args", {});
                r.env = jsonField<std::vector<std::string>>(body, "env", {});
                r.tcpEstablished = jsonField<bool>(body, "tcpEstablished", true);
                r.hostUserns = usernsIsHost(jsonField<std::string>(body, "userns", "auto"));
                r.user = jsonField<std::string>(body, "user", "");
                sendJson(res, 201, c.runContainer(r));
              }));

  server.Delete(R"(/v1/containers/([^/]+))", guarded([&c](const httplib::Request& req, httplib::Response& res) {
                  std::string name = req.matches[1];
                  std::string force = req.get_param_value("force");
                  c.removeContainer(name, force == "1" || force == "true");
                  sendJson(res, 200, {{"removed", name}});
                }));

  server.Get(R"(/v1/containers/([^/]+)/logs)", guarded([&c](const httplib::Request& req, httplib::Response& res) {
               uint32_t tail = 0;
               if (req.has_param("tail")) {
                 try {
                   tail = static_cast<uint32_t>(std::stoul(req.get_param_value("tail")));
                 } catch (const std::exception&) {
                   fail(ErrorKind::InvalidInput, "`tail` must be a non-negative number");
                 }
               }
               sendJson(res, 200, {{"container", std::string(req.matches[1])}, {"logs", c.containerLogs(req.matches[1], tail)}});
             }));

  server.Post(R"(/v1/containers/([^/]+)/stop)", guarded([&c](const httplib::Request& req, httplib::Response& res) {
                sendJson(res, 200, c.stopContainer(req.matches[1]));
              }));

  server.Post("/v1/migrations", guarded([&c, parseBody](const httplib::Request& req, httplib::Response& res) {
                json body = parseBody(req);
                MigrationRequest r;
                r.container = jsonField<std::string>(body, "container", "");
                r.target = jsonField<std::string>(body, "target", "");
                r.options = MigrationOptions::fromJson(body);
                std::string id = c.startMigration(r);
                sendJson(res, 202, {{"id", id}});
              }));

  server.Get("/v1/migrations", guarded([&c](const httplib::Request& req, httplib::Response& res) {
               size_t limit = 20;
               if (req.has_param("limit")) {
                 try {
                   limit = std::stoul(req.get_param_value("limit"));
                 } catch (const std::exception&) {
                   fail(ErrorKind::InvalidInput, "`limit` must be a non-negative number");
                 }
               }
               sendJson(res, 200, c.history(limit));
             }));

  server.Get(R"(/v1/migrations/([^/]+))", guarded([&c](const httplib::Request& req, httplib::Response& res) {
               sendJson(res, 200, c.migration(req.matches[1]));
             }));

  server.Post(R"(/v1/migrations/([^/]+)/cancel)", guarded([&c](const httplib::Request& req, httplib::Response& res) {
                sendJson(res, 202, c.cancelMigration(req.matches[1]));
              }));

  // A paused post-copy migration: retry its recovery now, or drop a side.
  server.Post(R"(/v1/migrations/([^/]+)/recover)", guarded([&c](const httplib::Request& req, httplib::Response& res) {
                sendJson(res, 202, c.recoverMigration(req.matches[1]));
              }));

  server.Post(R"(/v1/migrations/([^/]+)/abandon)",
              guarded([&c, parseBody](const httplib::Request& req, httplib::Response& res) {
                json body = parseBody(req);
                std::string keep = jsonField<std::string>(body, "keep", "");
                if (keep.empty()) fail(ErrorKind::InvalidInput, "abandon: `keep` is required (`source` or `target`)");
                sendJson(res, 200, c.abandonMigration(req.matches[1], keepSideFromName(keep)));
              }));

  server.Post("/v1/evacuations", guarded([&c, parseBody](const httplib::Request& req, httplib::Response& res) {
                json body = parseBody(req);
                EvacuationRequest r;
                r.host = jsonField<std::string>(body, "host", "");
                r.targets = jsonField<std::vector<std::string>>(body, "targets", {});
                r.parallel = jsonField<int>(body, "parallel", 0);
                r.postCopy = jsonField<bool>(body, "postCopy", false);
                if (r.parallel < 0) fail(ErrorKind::InvalidInput, "`parallel` must be positive");
                sendJson(res, 202, c.evacuate(r).toJson());
              }));

  // Prometheus Alertmanager webhook (version 4 payload): every firing alert
  // labelled action="evacuate" evacuates the host its `host` label names, or
  // the host part of its `instance` label (a host name or data address).
  server.Post("/v1/hooks/alertmanager", guarded([&c, parseBody](const httplib::Request& req, httplib::Response& res) {
                json body = parseBody(req);
                if (!body.contains("alerts") || !body["alerts"].is_array()) {
                  fail(ErrorKind::InvalidInput, "alertmanager: payload has no `alerts` array");
                }
                json evacuations = json::array(), ignored = json::array();
                for (auto& alert : body["alerts"]) {
                  json labels = alert.value("labels", json::object());
                  std::string name = labels.value("alertname", "");
                  if (alert.value("status", "") != "firing" || labels.value("action", "") != "evacuate") {
                    ignored.push_back({{"alert", name}, {"reason", "not a firing action=evacuate alert"}});
                    continue;
                  }
                  std::string host = labels.value("host", "");
                  if (host.empty()) {
                    host = labels.value("instance", "");
                    if (auto colon = host.rfind(':'); colon != std::string::npos) host.resize(colon);
                  }
                  auto resolved = c.resolveHost(host);
                  if (!resolved) {
                    ignored.push_back({{"alert", name}, {"reason", "no known host `" + host + "`"}});
                    continue;
                  }
                  try {
                    json result = c.evacuate(EvacuationRequest{*resolved, {}, 0}).toJson();
                    result["host"] = *resolved;
                    evacuations.push_back(result);
                  } catch (const std::exception& e) {
                    ignored.push_back({{"alert", name}, {"host", *resolved}, {"reason", e.what()}});
                  }
                }
                sendJson(res, 200, {{"evacuations", evacuations}, {"ignored", ignored}});
              }));
}

}  // namespace migrate
