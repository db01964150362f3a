// What integration tests share: the built binaries, the test image, a
// scratch agent state directory that is torn down with everything in it
// (containers killed, mounts and cgroups gone); waitUntil from wait.h.
#pragma once

#include <chrono>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/files.h"
#include "common/subprocess.h"
#include "tests/support/privileges.h"
#include "tests/support/wait.h"

namespace migrate::test {

namespace fs = std::filesystem;

fs::path binary(const std::string& name);   // build tree: agent/migrate-agent, ...
fs::path testImage();

// A migrate-agent state directory for one test; its destructor removes every
// container it still holds (runc delete --force, overlay unmount) and the dir.
class AgentHome {
 public:
  explicit AgentHome(std::string hostName);
  ~AgentHome();
  AgentHome(const AgentHome&) = delete;

  const fs::path& dir() const { return dir_.path(); }
  const std::string& host() const { return host_; }
  std::vector<std::string> extraArgs;  // e.g. --cni-config FILE; netns prefix goes in `wrap`
  std::vector<std::string> wrap;       // command prefix, e.g. {"nsenter", "--net=/run/netns/host1"}

  // Runs `migrate-agent --state DIR --host HOST <args>`; throws with stderr on failure.
  std::string agent(const std::vector<std::string>& args);
  // Same, but returns {status, stdout, stderr} without throwing.
  struct Result {
    int status;
    std::string out, err;
  };
  Result tryAgent(const std::vector<std::string>& args);
  nlohmann::json agentJson(const std::vector<std::string>& args);
  void importTestImage();
  // Trusts bundles `signer` signs, as an operator would: its public key
  // (`migrate-agent signing-key`) in this agent's trusted-signers/HOST.pub.
  void trustSigner(AgentHome& signer);

 private:
  std::string host_;
  TempDir dir_;
};

// Two agents on this host with the test image, the target trusting the
// source's signature: where every export/import test starts.
struct AgentPair {
  AgentPair();
  AgentHome source{"src"}, target{"dst"};
};

// The multi-host lab (scripts/lab.sh up N) for one test; `lab.sh down` when
// it dies, so no namespace, link or process outlives the test.
class LabGuard {
 public:
  explicit LabGuard(int hosts);
  ~LabGuard();
  LabGuard(const LabGuard&) = delete;
  static std::string script();
  // `lab.sh exec HOST ...`, returning {status, out, err}.
  static AgentHome::Result exec(const std::string& host, const std::vector<std::string>& args);

 private:
  Fd sessionLock_;  // every user of the lab holds it (scripts/lab.sh): one lab session at a time
};

// An AgentHome whose commands run inside lab host `host` with its CNI network.
void placeInLabHost(AgentHome& home, const std::string& host);

// A whole cluster (scripts/cluster.sh): lab namespaces, the coordinator on
// the fabric, one agent daemon per host with the test image; torn down with
// every container when it dies.
class ClusterGuard {
 public:
  explicit ClusterGuard(int hosts);
  ~ClusterGuard();
  ClusterGuard(const ClusterGuard&) = delete;

  // The `migrate` CLI against this cluster's coordinator.
  AgentHome::Result tryMigrate(const std::vector<std::string>& args);
  std::string migrate(const std::vector<std::string>& args);
  nlohmann::json migrateJson(const std::vector<std::string>& args);

  int agentPid(const std::string& host) const;
  int coordinatorPid() const;
  void startAgent(const std::string& host);
  void startCoordinator();
  // The local agent CLI on a host's state (read-only use while its daemon runs).
  nlohmann::json agentJson(const std::string& host, const std::vector<std::string>& args);
  static fs::path agentState(const std::string& host) { return fs::path("/var/lib/migrate-lab") / host; }

 private:
  static std::string script();
  Fd sessionLock_;
};

// True while `pid` runs (a zombie does not count: daemons are reparented to
// PID 1, which in some sandboxes never reaps them).
bool processAlive(int pid);

// The test client (tests/payloads/tcp-client.c) in the `client` netns: one
// TCP connection streaming numbered messages and checking every echo.
class TcpClient {
 public:
  TcpClient(const std::string& ip, int port);
  // SIGTERM, then its JSON summary {sent, verified, maxStallMs, error}; the
  // exit status is in "exitStatus".
  nlohmann::json stop();
  // Echoes verified so far, from its progress lines (up to 100 ms behind).
  unsigned long verified();

 private:
  Fd output_;
  Fd progress_;  // its stderr, non-blocking
  std::string progressText_;
  std::optional<Subprocess> process_;
};

// Mount points at or under `dir`, from /proc/self/mountinfo.
std::vector<std::string> mountsUnder(const fs::path& dir);

// The error kind ("conflict", "invalid-input", ...) a failed command run
// with `--output json` printed: {"error", "kind"} on stdout, from both
// migrate-agent and migrate. "" if it printed no such object.
std::string errorKindOf(const AgentHome::Result& result);

// How many times `needle` occurs in `text`.
size_t occurrences(const std::string& text, const std::string& needle);

// Numbers from "count N" lines of a counter payload's log.
std::vector<unsigned long> counts(const std::string& log);
// The last of them in container `name`'s log on `home`, 0 before the first.
unsigned long lastCount(AgentHome& home, const std::string& name);

}  // namespace migrate::test
