// What the coordinator knows about each host: identity from its CURVE key
// (the allow-list), and state from `register` and `heartbeat` messages.
//
// Thread-safe: the agent link's poll thread writes, migrations and the HTTP
// API read snapshots.
#pragma once

#include <chrono>
#include <filesystem>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "agent/id-mapping.h"
#include "schema/control.capnp.h"

namespace migrate {

struct ContainerSummary {
  std::string id;
  std::string name;
  std::string image;
  std::string state;  // "running", "stopped", ... (proto::ContainerState, lowercase)
  int32_t pid = 0;
  std::string ip;
  std::string mac;
  int64_t createdAtNs = 0;
  std::string imageDigest;
  int32_t exitCode = 0;
  // Its user namespace; none: the host's. It moves with the container, so
  // a target must not have a container whose mapping overlaps it.
  std::optional<IdMapping> idMapping;

  nlohmann::json toJson() const;
};

struct ImageSummary {
  std::string digest;
  std::vector<std::string> names;
  uint64_t sizeBytes = 0;
};

// The most containers one report (register, heartbeat, a listContainers
// reply) may hold. A host runs far fewer; a longer list is a broken or hostile
// agent, and is refused whole rather than recorded in part.
constexpr size_t kMaxContainersPerReport = 10000;

ContainerSummary containerFromProto(proto::ContainerInfo::Reader info);
// Throws Error(InvalidInput) naming kMaxContainersPerReport for a longer list.
std::vector<ContainerSummary> containersFromProto(capnp::List<proto::ContainerInfo>::Reader list);
std::string containerStateName(proto::ContainerState state);

struct HostState {
  std::string name;
  std::string publicKey;
  bool registered = false;  // Sent `register` since this coordinator started.
  bool up = false;          // Registered and heard from within 3 heartbeat intervals.
  uint64_t session = 0;     // Incremented on every `register`: a new agent process or connection.
  std::chrono::steady_clock::time_point lastSeen;
  int64_t lastSeenEpochMs = 0;
  // The longest wait between two heartbeats since it registered: how close
  // a busy agent came to being declared down (at 3 intervals).
  std::chrono::steady_clock::time_point lastHeartbeat;
  int64_t maxHeartbeatGapMs = 0;

  std::string agentVersion, criuVersion, runcVersion, kernelVersion, dataAddress;
  uint32_t protocolVersion = 0;
  std::string cpuInfo;  // `criu cpuinfo dump` image, binary.
  // Ed25519 public key (32 raw bytes) whose bundles targets of this host's
  // migrations accept: the allow-list's, if it enrolls one, else the one the
  // agent sent in `register`.
  std::string signingKey;
  bool signingKeyEnrolled = false;

  uint64_t memBytes = 0, diskBytes = 0;
  uint32_t cpus = 0;
  double loadAvg1 = 0;
  uint64_t memAvailableBytes = 0, diskAvailableBytes = 0;
  uint32_t runningContainers = 0, activeMigrations = 0;

  std::vector<ImageSummary> images;
  std::vector<ContainerSummary> containers;

  const ContainerSummary* findContainer(const std::string& name) const;
  bool hasImage(const std::string& digest) const;
  nlohmann::json toJson() const;
};

struct AllowedHost {
  std::string name;
  std::string publicKey;  // Z85
  std::string signingKey;  // optional, 32 raw bytes: pinned bundle signing key
};

// Reads the allow-list: one `hostName publicKeyZ85 [ed25519:signingKey]` per
// line; blank lines and `#` comments ignored. A signing key given here is
// pinned: a `register` sending another one does not replace it (that host's
// bundles are then refused by every target, and the coordinator says why).
// Throws Error(InvalidInput) naming the line on a bad one.
std::vector<AllowedHost> loadAllowList(const std::filesystem::path& path);

class HostRegistry {
 public:
  HostRegistry(std::vector<AllowedHost> hosts, std::chrono::milliseconds heartbeatInterval);

  std::chrono::milliseconds heartbeatInterval() const { return heartbeatInterval_; }
  // Z85 key -> host name, for the ControlServer's ZAP handler.
  std::map<std::string, std::string> keyToHost() const;

  // Both throw Error(InvalidInput) naming the host and the rule, recording
  // nothing, for a report over kMaxContainersPerReport; a heartbeat also
  // from a host that has not registered since this coordinator started
  // (its key is allowed, but only `register` makes it a member).
  void recordRegister(const std::string& host, proto::Register::Reader reg);
  void recordHeartbeat(const std::string& host, proto::Heartbeat::Reader heartbeat);
  void recordContainers(const std::string& host, std::vector<ContainerSummary> containers);
  void touch(const std::string& host);

  bool isKnown(const std::string& host) const;
  // A host is down after 3 missed heartbeats (or before it registered).
  bool isUp(const std::string& host) const;
  uint64_t session(const std::string& host) const;

  std::optional<HostState> findIfExists(const std::string& host) const;
  HostState get(const std::string& host) const;  // Error(NotFound)
  std::vector<HostState> list() const;

 private:
  HostState snapshot(const HostState& state) const;
  bool upLocked(const HostState& state) const;

  std::chrono::milliseconds heartbeatInterval_;
  mutable std::mutex mutex_;
  std::map<std::string, HostState> hosts_;
};

}  // namespace migrate
