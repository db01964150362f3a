#include "coordinator/host-registry.h"

#include <algorithm>
#include <fstream>
#include <sstream>

#include "agent/id-mapping-proto.h"
#include "common/error.h"
#include "common/files.h"
#include "common/log.h"
#include "common/signing.h"
#include "net/curve-keys.h"

namespace migrate {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

std::string text(capnp::Text::Reader t) { return std::string(t.cStr(), t.size()); }

int64_t epochMsNow() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

std::string containerStateName(proto::ContainerState state) {
  switch (state) {
    case proto::ContainerState::UNKNOWN: return "unknown";
    case proto::ContainerState::CREATED: return "created";
    case proto::ContainerState::RUNNING: return "running";
    case proto::ContainerState::PAUSED: return "paused";
    case proto::ContainerState::STOPPED: return "stopped";
    case proto::ContainerState::CHECKPOINTED: return "checkpointed";
    case proto::ContainerState::RESTORING: return "restoring";
  }
  return "unknown";
}

ContainerSummary containerFromProto(proto::ContainerInfo::Reader info) {
  ContainerSummary c;
  c.id = text(info.getId());
  c.name = text(info.getName());
  c.image = text(info.getImage());
  c.state = containerStateName(info.getState());
  c.pid = info.getPid();
  c.ip = text(info.getIp());
  c.mac = text(info.getMac());
  c.createdAtNs = info.getCreatedAt();
  c.imageDigest = text(info.getImageDigest());
  c.exitCode = info.getExitCode();
  c.idMapping = idMappingFromProto(info.getIdMapping());
  return c;
}

std::vector<ContainerSummary> containersFromProto(capnp::List<proto::ContainerInfo>::Reader list) {
  if (list.size() > kMaxContainersPerReport) {
    fail(ErrorKind::InvalidInput, "a report of " + std::to_string(list.size()) + " containers is over the limit of " +
                                      std::to_string(kMaxContainersPerReport) + " per report");
  }
  std::vector<ContainerSummary> out;
  out.reserve(list.size());
  for (auto info : list) out.push_back(containerFromProto(info));
  return out;
}

json ContainerSummary::toJson() const {
  return {{"id", id},   {"name", name}, {"image", image},        {"state", state},
          {"pid", pid}, {"ip", ip},     {"mac", mac},            {"createdAtNs", createdAtNs},
          {"imageDigest", imageDigest}, {"exitCode", exitCode},
          {"idMapping", idMapping ? idMapping->toJson() : json()}};
}

const ContainerSummary* HostState::findContainer(const std::string& containerName) const {
  for (auto& c : containers) {
    if (c.name == containerName) return &c;
  }
  return nullptr;
}

bool HostState::hasImage(const std::string& digest) const {
  for (auto& i : images) {
    if (i.digest == digest) return true;
  }
  return false;
}

json HostState::toJson() const {
  json imageList = json::array();
  for (auto& i : images) imageList.push_back({{"digest", i.digest}, {"names", i.names}, {"sizeBytes", i.sizeBytes}});
  json containerList = json::array();
  for (auto& c : containers) containerList.push_back(c.toJson());
  return {
      {"name", name},
      {"up", up},
      {"registered", registered},
      {"lastSeen", lastSeenEpochMs},
      {"maxHeartbeatGapMs", maxHeartbeatGapMs},
      {"dataAddress", dataAddress},
      {"versions",
       {{"agent", agentVersion}, {"criu", criuVersion}, {"runc", runcVersion}, {"kernel", kernelVersion},
        {"protocol", protocolVersion}}},
      {"cpuInfoBytes", cpuInfo.size()},
      {"signingKey", signingKey.empty() ? "" : publicKeyText(signingKey)},
      {"signingKeyEnrolled", signingKeyEnrolled},
      {"capacity", {{"memBytes", memBytes}, {"diskBytes", diskBytes}, {"cpus", cpus}}},
      {"load",
       {{"loadAvg1", loadAvg1},
        {"memAvailableBytes", memAvailableBytes},
        {"diskAvailableBytes", diskAvailableBytes},
        {"runningContainers", runningContainers},
        {"activeMigrations", activeMigrations}}},
      {"images", imageList},
      {"containers", containerList},
  };
}

std::vector<AllowedHost> loadAllowList(const std::filesystem::path& path) {
  ErrorContext context("agents allow-list " + path.string());
  std::istringstream in(readFile(path));
  std::vector<AllowedHost> hosts;
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    // Comments are whole lines: '#' is also a Z85 digit, so it may occur in a key.
    auto first = line.find_first_not_of(" \t");
    if (first != std::string::npos && line[first] == '#') continue;
    std::istringstream fields(line);
    AllowedHost host;
    if (!(fields >> host.name)) continue;
    std::string signingKey, extra;
    if (!(fields >> host.publicKey) || (fields >> signingKey && fields >> extra)) {
      fail(ErrorKind::InvalidInput,
           "line " + std::to_string(number) + ": expected `hostName publicKeyZ85 [ed25519:signingKey]`");
    }
    if (!signingKey.empty()) {
      try {
        host.signingKey = parsePublicKeyText(signingKey);
      } catch (const Error& e) {
        fail(ErrorKind::InvalidInput, "line " + std::to_string(number) + " signing key of `" + host.name + "`: " + e.what());
      }
    }
    checkCurveKey(host.publicKey, "line " + std::to_string(number) + " public key of `" + host.name + "`");
    for (auto& other : hosts) {
      if (other.name == host.name || other.publicKey == host.publicKey) {
        fail(ErrorKind::InvalidInput, "line " + std::to_string(number) + ": host `" + host.name +
                                          "` or its key is listed twice");
      }
    }
    hosts.push_back(std::move(host));
  }
  return hosts;
}

HostRegistry::HostRegistry(std::vector<AllowedHost> hosts, std::chrono::milliseconds heartbeatInterval)
    : heartbeatInterval_(heartbeatInterval) {
  for (auto& h : hosts) {
    HostState state;
    state.name = h.name;
    state.publicKey = h.publicKey;
    state.signingKey = h.signingKey;
    state.signingKeyEnrolled = !h.signingKey.empty();
    hosts_[h.name] = std::move(state);
  }
}

std::map<std::string, std::string> HostRegistry::keyToHost() const {
  std::lock_guard lock(mutex_);
  std::map<std::string, std::string> out;
  for (auto& [name, state] : hosts_) out[state.publicKey] = name;
  return out;
}

void HostRegistry::recordRegister(const std::string& host, proto::Register::Reader reg) {
  ErrorContext context("registry: refusing the registration of `" + host + "`");
  // Decoded before anything is recorded, so a refused report changes nothing.
  auto containers = containersFromProto(reg.getContainers());
  std::lock_guard lock(mutex_);
  auto it = hosts_.find(host);
  if (it == hosts_.end()) return;
  HostState& s = it->second;
  s.registered = true;
  ++s.session;
  s.lastSeen = Clock::now();
  s.lastSeenEpochMs = epochMsNow();
  s.lastHeartbeat = s.lastSeen;
  s.maxHeartbeatGapMs = 0;
  s.agentVersion = text(reg.getAgentVersion());
  s.criuVersion = text(reg.getCriuVersion());
  s.runcVersion = text(reg.getRuncVersion());
  s.kernelVersion = text(reg.getKernelVersion());
  s.dataAddress = text(reg.getDataAddress());
  s.protocolVersion = reg.getProtocolVersion();
  auto cpu = reg.getCpuInfo();
  s.cpuInfo.assign(reinterpret_cast<const char*>(cpu.begin()), cpu.size());
  auto sent = reg.getSigningKey();
  std::string signingKey(reinterpret_cast<const char*>(sent.begin()), sent.size());
  if (!s.signingKeyEnrolled) {
    s.signingKey = signingKey;
  } else if (signingKey != s.signingKey) {
    logError("registry: `" + host + "` registered bundle signing key " +
             (signingKey.empty() ? std::string("(none)") : publicKeyText(signingKey)) + ", but the allow-list enrolls " +
             publicKeyText(s.signingKey) + ": targets will refuse its bundles until one of them is changed");
  }
  s.memBytes = reg.getCapacity().getMemBytes();
  s.diskBytes = reg.getCapacity().getDiskBytes();
  s.cpus = reg.getCapacity().getCpus();
  s.images.clear();
  for (auto image : reg.getImages()) {
    ImageSummary i;
    i.digest = text(image.getDigest());
    for (auto n : image.getNames()) i.names.push_back(text(n));
    i.sizeBytes = image.getSizeBytes();
    s.images.push_back(std::move(i));
  }
  s.containers = std::move(containers);
}

void HostRegistry::recordHeartbeat(const std::string& host, proto::Heartbeat::Reader heartbeat) {
  ErrorContext context("registry: ignoring a heartbeat of `" + host + "`");
  std::lock_guard lock(mutex_);
  auto it = hosts_.find(host);
  if (it == hosts_.end()) return;
  HostState& s = it->second;
  // An allowed key alone makes no member: without `register` (protocol and
  // name checked) the host's reports would fill the registry unchecked.
  if (!s.registered) fail(ErrorKind::InvalidInput, "it has not registered since this coordinator started");
  // An agent busy with a long export or import sends its heartbeat without
  // the list (no pointer, not an empty list): keep what we knew. Decoded
  // first, so a refused list changes nothing.
  std::optional<std::vector<ContainerSummary>> containers;
  if (heartbeat.hasContainers()) containers = containersFromProto(heartbeat.getContainers());
  s.lastSeen = Clock::now();
  s.lastSeenEpochMs = epochMsNow();
  auto gap = std::chrono::duration_cast<std::chrono::milliseconds>(s.lastSeen - s.lastHeartbeat).count();
  s.maxHeartbeatGapMs = std::max<int64_t>(s.maxHeartbeatGapMs, gap);
  s.lastHeartbeat = s.lastSeen;
  auto load = heartbeat.getLoad();
  s.loadAvg1 = load.getLoadAvg1();
  s.memAvailableBytes = load.getMemAvailableBytes();
  s.diskAvailableBytes = load.getDiskAvailableBytes();
  s.activeMigrations = load.getActiveMigrations();
  if (containers) {
    s.runningContainers = load.getRunningContainers();
    s.containers = std::move(*containers);
  }
}

void HostRegistry::recordContainers(const std::string& host, std::vector<ContainerSummary> containers) {
  std::lock_guard lock(mutex_);
  auto it = hosts_.find(host);
  if (it != hosts_.end()) it->second.containers = std::move(containers);
}

void HostRegistry::touch(const std::string& host) {
  std::lock_guard lock(mutex_);
  auto it = hosts_.find(host);
  if (it == hosts_.end()) return;
  it->second.lastSeen = Clock::now();
  it->second.lastSeenEpochMs = epochMsNow();
}

bool HostRegistry::isKnown(const std::string& host) const {
  std::lock_guard lock(mutex_);
  return hosts_.count(host) > 0;
}

bool HostRegistry::upLocked(const HostState& s) const {
  return s.registered && Clock::now() - s.lastSeen <= 3 * heartbeatInterval_;
}

bool HostRegistry::isUp(const std::string& host) const {
  std::lock_guard lock(mutex_);
  auto it = hosts_.find(host);
  return it != hosts_.end() && upLocked(it->second);
}

uint64_t HostRegistry::session(const std::string& host) const {
  std::lock_guard lock(mutex_);
  auto it = hosts_.find(host);
  return it == hosts_.end() ? 0 : it->second.session;
}

HostState HostRegistry::snapshot(const HostState& state) const {
  HostState copy = state;
  copy.up = upLocked(state);
  return copy;
}

std::optional<HostState> HostRegistry::findIfExists(const std::string& host) const {
  std::lock_guard lock(mutex_);
  auto it = hosts_.find(host);
  if (it == hosts_.end()) return std::nullopt;
  return snapshot(it->second);
}

HostState HostRegistry::get(const std::string& host) const {
  auto state = findIfExists(host);
  if (!state) fail(ErrorKind::NotFound, "unknown host `" + host + "` (not on the agents allow-list)");
  return *state;
}

std::vector<HostState> HostRegistry::list() const {
  std::lock_guard lock(mutex_);
  std::vector<HostState> out;
  for (auto& [name, state] : hosts_) out.push_back(snapshot(state));
  return out;
}

}  // namespace migrate
