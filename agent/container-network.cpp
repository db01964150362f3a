#include "agent/container-network.h"

#include "agent/network-hook.h"
#include "common/error.h"
#include "common/files.h"
#include "common/log.h"
#include "net/announce.h"
#include "net/netns.h"
#include "net/network-status.h"

namespace migrate {

using nlohmann::json;

ContainerNetwork::ContainerNetwork(fs::path stateDir, std::optional<fs::path> cniConfig)
    : stateDir_(std::move(stateDir)), cniConfig_(std::move(cniConfig)), cni_(agentCniClient(stateDir_)) {}

bool ContainerNetwork::attachesFromHook(const Container& c) const {
  return c.config.idMapping && c.config.network && cniConfig_;
}

void ContainerNetwork::adoptAttachment(Container& c) {
  auto text = readFileIfExists(c.paths.networkAttachment());
  if (!text) return;
  auto status = parseNetworkStatus(*text);
  c.state.netns = containerNetnsPath(stateDir_, c.config.id).string();
  c.state.networkStatus = json::parse(serializeNetworkStatus(status));
  c.state.ip = requestedIp(status).value_or("");
  c.state.mac = requestedMac(status).value_or("");
  fs::remove(c.paths.networkAttachment());
}

void ContainerNetwork::requireAttachment(Container& c) {
  adoptAttachment(c);
  if (attachesFromHook(c) && c.state.netns.empty()) {
    fail("network hook of `" + c.config.name + "` left no attachment (runc ran no prestart hook?)");
  }
}

void ContainerNetwork::setup(Container& c, std::optional<std::string> ip, std::optional<std::string> mac,
                             std::optional<NetnsLockGuard>* lock) {
  if (!c.config.network || !cniConfig_) {
    // Loopback only: runc gives the container a fresh network namespace.
    c.state.netns.clear();
    c.state.networkStatus = json::array();
    return;
  }
  ErrorContext context("network");
  auto network = CniNetwork::load(*cniConfig_);
  fs::path netns = containerNetnsPath(stateDir_, c.config.id);
  fs::create_directories(netns.parent_path());
  if (netnsExists(netns)) removeNetns(netns);
  // Declared first, so on failure the netns goes before it and nothing is unlocked.
  std::optional<NetnsLockGuard> locked;
  NetnsGuard guard(netns);
  if (lock) locked.emplace(netns);
  CniAttachment attachment{c.config.id, netns, "eth0", ip, mac};
  auto result = cni_.add(network, attachment);
  c.state.netns = guard.release().string();
  if (lock) lock->emplace(std::move(*locked));
  std::vector<CniResult> status = {result};
  c.state.networkStatus = json::parse(serializeNetworkStatus(status));
  c.state.ip = requestedIp(status).value_or("");
  c.state.mac = requestedMac(status).value_or("");
}

void ContainerNetwork::teardown(Container& c) {
  if (c.state.netns.empty()) return;
  if (cniConfig_) {
    std::optional<CniResult> prev;
    auto results = parseNetworkStatus(c.state.networkStatus.dump());
    if (!results.empty()) prev = results.front();
    try {
      cni_.del(CniNetwork::load(*cniConfig_), CniAttachment{c.config.id, c.state.netns, "eth0", {}, {}}, prev);
    } catch (const std::exception& e) {
      logWarn("cni: DEL of `" + c.config.name + "`: " + e.what());
    }
  }
  removeNetns(c.state.netns);
  c.state.netns.clear();
}

void ContainerNetwork::releaseAddress(Container& c) {
  if (c.state.netns.empty() || !cniConfig_) return;
  std::optional<CniResult> prev;
  auto results = parseNetworkStatus(c.state.networkStatus.dump());
  if (!results.empty()) prev = results.front();
  cni_.del(CniNetwork::load(*cniConfig_), CniAttachment{c.config.id, c.state.netns, "eth0", {}, {}}, prev);
}

void ContainerNetwork::reattachAddress(Container& c) {
  if (c.state.netns.empty() || !cniConfig_ || !netnsExists(c.state.netns)) return;
  ErrorContext context("network");
  std::optional<std::string> ip, mac;
  if (!c.state.ip.empty()) ip = c.state.ip;
  if (!c.state.mac.empty()) mac = c.state.mac;
  cni_.add(CniNetwork::load(*cniConfig_), CniAttachment{c.config.id, c.state.netns, "eth0", ip, mac});
  if (ip) announceAddress(c.state.netns, "eth0", *ip);
}

}  // namespace migrate
