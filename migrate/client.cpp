#include "migrate/client.h"

#include <httplib.h>
#include <openssl/x509.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <cstdlib>
#include <filesystem>

#include "common/error.h"
#include "common/files.h"

namespace migrate {

using nlohmann::json;

namespace {

constexpr const char* kDefaultCoordinator = "unix:/run/migrate-lab/coordinator.sock";

// httplib 0.11 connects over TCP only; its connect step is a protected
// virtual, so a unix-socket client overrides just that.
class UnixClient : public httplib::ClientImpl {
 public:
  explicit UnixClient(std::string path) : httplib::ClientImpl("localhost", 80), path_(std::move(path)) {}

 protected:
  bool create_and_connect_socket(Socket& socket, httplib::Error& error) override {
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    if (path_.size() >= sizeof(address.sun_path)) {
      error = httplib::Error::Connection;
      return false;
    }
    std::strcpy(address.sun_path, path_.c_str());
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || ::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
      if (fd >= 0) ::close(fd);
      error = httplib::Error::Connection;
      return false;
    }
    socket.sock = fd;
    return true;
  }

 private:
  std::string path_;
};

std::string envOr(const char* name, const std::string& fallback) {
  const char* value = std::getenv(name);
  return value && *value ? value : fallback;
}

}  // namespace

std::string pathSegment(const std::string& s) {
  static constexpr char kDigits[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kDigits[c >> 4];
      out += kDigits[c & 0xf];
    }
  }
  return out;
}

Client::Client(ClientOptions options) {
  coordinator_ = options.coordinator.empty() ? envOr("MIGRATE_COORDINATOR", kDefaultCoordinator) : options.coordinator;
  std::string tokenFile = options.tokenFile.empty() ? envOr("MIGRATE_TOKEN_FILE", "") : options.tokenFile;
  caFile_ = options.caFile.empty() ? envOr("MIGRATE_CA", "") : options.caFile;
  if (!tokenFile.empty()) {
    token_ = readFile(tokenFile);
    while (!token_.empty() && std::isspace(static_cast<unsigned char>(token_.back()))) token_.pop_back();
  }
}

json Client::send(const std::string& method, const std::string& path, const std::string& body) {
  std::unique_ptr<httplib::ClientImpl> http;
  httplib::SSLClient* tlsClient = nullptr;  // Into `http`, for the verification result.
  bool https = coordinator_.rfind("https://", 0) == 0;
  if (coordinator_.rfind("unix:", 0) == 0) {
    http = std::make_unique<UnixClient>(coordinator_.substr(5));
  } else if (https || coordinator_.rfind("http://", 0) == 0) {
    std::string hostPort = coordinator_.substr(https ? 8 : 7);
    while (!hostPort.empty() && hostPort.back() == '/') hostPort.pop_back();
    auto colon = hostPort.rfind(':');
    int port = colon == std::string::npos ? (https ? 443 : 80) : std::atoi(hostPort.c_str() + colon + 1);
    std::string host = hostPort.substr(0, colon);
    if (https) {
      auto tls = std::make_unique<httplib::SSLClient>(host, port);
      // Verified always: the chain against the CA file (or the system's CAs),
      // and the name or IP address against the certificate's subjectAltName.
      tls->enable_server_certificate_verification(true);
      if (!caFile_.empty()) {
        if (!std::filesystem::exists(caFile_)) fail(ErrorKind::NotFound, "CA file " + caFile_ + " does not exist");
        tls->set_ca_cert_path(caFile_.c_str());
      }
      tlsClient = tls.get();
      http = std::move(tls);
    } else {
      http = std::make_unique<httplib::ClientImpl>(host, port);
    }
  } else {
    fail(ErrorKind::InvalidInput,
         "coordinator address `" + coordinator_ + "` is neither unix:/path, https://host:port nor http://host:port");
  }
  http->set_connection_timeout(std::chrono::seconds(5));
  http->set_read_timeout(std::chrono::seconds(60));
  httplib::Headers headers;
  if (!token_.empty()) headers.emplace("Authorization", "Bearer " + token_);
  httplib::Result result = method == "GET"      ? http->Get(path.c_str(), headers)
                           : method == "DELETE" ? http->Delete(path.c_str(), headers)
                                                : http->Post(path.c_str(), headers, body, "application/json");
  if (!result) {
    if (result.error() == httplib::Error::SSLServerVerification && tlsClient) {
      fail(ErrorKind::InvalidInput, "the coordinator at " + coordinator_ + " presented a certificate that does not verify (" +
                                        X509_verify_cert_error_string(tlsClient->get_openssl_verify_result()) + ") against " +
                                        (caFile_.empty() ? "the system's CAs" : "CA file " + caFile_) +
                                        "; give --ca or set MIGRATE_CA");
    }
    fail(ErrorKind::Disconnected,
         "cannot reach the coordinator at " + coordinator_ + ": " + httplib::to_string(result.error()));
  }
  json reply = json::parse(result->body, nullptr, false);
  if (result->status >= 200 && result->status < 300) {
    if (reply.is_discarded()) fail("coordinator sent a reply that is not JSON (" + std::to_string(result->status) + ")");
    return reply;
  }
  if (result->status == 401) {
    fail(ErrorKind::InvalidInput, "coordinator refused the request (" +
                                      (reply.is_object() ? reply.value("error", std::string("unauthorized"))
                                                         : std::string("unauthorized")) +
                                      "); give --token-file or set MIGRATE_TOKEN_FILE");
  }
  if (reply.is_object() && reply.contains("error")) {
    fail(kindFromName(reply.value("kind", "failed")), reply.value("error", std::string()));
  }
  fail("coordinator answered HTTP " + std::to_string(result->status) + " to " + method + " " + path);
}

json Client::get(const std::string& path) { return send("GET", path, ""); }
json Client::post(const std::string& path, const json& body) { return send("POST", path, body.dump()); }
json Client::del(const std::string& path) { return send("DELETE", path, ""); }

json listHosts(Client& client) { return client.get("/v1/hosts"); }
json listContainers(Client& client) { return client.get("/v1/containers"); }

json runContainer(Client& client, const RunOptions& o) {
  json body = {{"name", o.name},     {"image", o.image},
               {"args", o.args},     {"env", o.env},
               {"userns", o.userns}, {"tcpEstablished", o.tcpEstablished}};
  if (!o.host.empty()) body["host"] = o.host;
  if (!o.user.empty()) body["user"] = o.user;
  return client.post("/v1/containers", body);
}

json containerLogs(Client& client, const std::string& name, uint32_t tail) {
  return client.get("/v1/containers/" + pathSegment(name) + "/logs?tail=" + std::to_string(tail));
}

json removeContainer(Client& client, const std::string& name, bool force) {
  return client.del("/v1/containers/" + pathSegment(name) + (force ? "?force=1" : ""));
}

json startMigration(Client& client, const MoveOptions& o) {
  json body = {{"container", o.container},
               {"target", o.target},
               {"tcpEstablished", o.tcpEstablished},
               {"leaveRunning", o.leaveRunning},
               {"postCopy", o.postCopy}};
  if (o.maxDowntimeMs) body["maxDowntimeMs"] = o.maxDowntimeMs;
  return client.post("/v1/migrations", body);
}

json migrationStatus(Client& client, const std::string& id) { return client.get("/v1/migrations/" + pathSegment(id)); }

json cancelMigration(Client& client, const std::string& id) {
  return client.post("/v1/migrations/" + pathSegment(id) + "/cancel", json::object());
}

json recoverMigration(Client& client, const std::string& id) {
  return client.post("/v1/migrations/" + pathSegment(id) + "/recover", json::object());
}

json abandonMigration(Client& client, const std::string& id, const std::string& keep) {
  return client.post("/v1/migrations/" + pathSegment(id) + "/abandon", json{{"keep", keep}});
}

json migrationHistory(Client& client, size_t limit) {
  return client.get("/v1/migrations?limit=" + std::to_string(limit));
}

json evacuate(Client& client, const EvacuateOptions& o) {
  json body = {{"host", o.host}};
  if (!o.targets.empty()) body["targets"] = o.targets;
  if (o.parallel > 0) body["parallel"] = o.parallel;
  if (o.postCopy) body["postCopy"] = true;
  return client.post("/v1/evacuations", body);
}

}  // namespace migrate
