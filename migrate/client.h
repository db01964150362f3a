// The `migrate` CLI's client library: JSON over HTTP to the coordinator, on a
// unix socket (unix:/path) or TCP (https://host:port, the coordinator's
// certificate verified against a CA file or the system's CAs; http://host:port
// only for a coordinator started with --insecure-http), with a bearer token.
// Each verb calls one function here.
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace migrate {

struct ClientOptions {
  std::string coordinator;  // Empty: $MIGRATE_COORDINATOR, else unix:/run/migrate-lab/coordinator.sock.
  std::string tokenFile;    // Empty: $MIGRATE_TOKEN_FILE, else no token.
  std::string caFile;       // CA certificate(s) for https://. Empty: $MIGRATE_CA, else the system's CAs.
};

// Throws Error with the coordinator's message and kind (from its {error, kind} body).
class Client {
 public:
  explicit Client(ClientOptions options);
  nlohmann::json get(const std::string& path);
  nlohmann::json post(const std::string& path, const nlohmann::json& body);
  nlohmann::json del(const std::string& path);
  const std::string& coordinator() const { return coordinator_; }

 private:
  nlohmann::json send(const std::string& method, const std::string& path, const std::string& body);
  std::string coordinator_;
  std::string token_;
  std::string caFile_;
};

struct RunOptions {
  std::string host;
  std::string name;
  std::string image;
  std::vector<std::string> args;
  std::vector<std::string> env;
  bool tcpEstablished = true;
  std::string userns = "auto";  // auto | host
  std::string user;             // "UID[:GID]"; empty: the image's
};

struct MoveOptions {
  std::string container;
  std::string target;
  bool tcpEstablished = true;
  bool leaveRunning = false;
  bool postCopy = false;
  uint64_t maxDowntimeMs = 0;  // 0: no budget
};

struct EvacuateOptions {
  std::string host;
  std::vector<std::string> targets;
  int parallel = 0;
  bool postCopy = false;
};

nlohmann::json listHosts(Client& client);
nlohmann::json listContainers(Client& client);
nlohmann::json runContainer(Client& client, const RunOptions& options);
nlohmann::json containerLogs(Client& client, const std::string& name, uint32_t tail);
nlohmann::json removeContainer(Client& client, const std::string& name, bool force);
nlohmann::json startMigration(Client& client, const MoveOptions& options);  // {id}
nlohmann::json migrationStatus(Client& client, const std::string& id);
nlohmann::json cancelMigration(Client& client, const std::string& id);
nlohmann::json recoverMigration(Client& client, const std::string& id);
// `keep`: "source" or "target".
nlohmann::json abandonMigration(Client& client, const std::string& id, const std::string& keep);
nlohmann::json migrationHistory(Client& client, size_t limit);
nlohmann::json evacuate(Client& client, const EvacuateOptions& options);

// "web" -> "web"; escapes what a path segment cannot hold.
std::string pathSegment(const std::string& s);

}  // namespace migrate
