// network.status: what CNI said about a container's networks, kept with its
// checkpoint so the restore can ask for the same address and MAC. A JSON
// array of CNI Results (CNI spec 1.0 "Result"; 0.3/0.4 results, with their
// per-IP "version", parse too), as libpod writes it.
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace migrate {

struct CniInterface {
  std::string name;
  std::string mac;      // Empty when the plugin did not report one.
  std::string sandbox;  // The netns path for interfaces inside the container; empty for host-side ones.
};

struct CniIpConfig {
  std::string address;           // CIDR: "198.18.0.21/24".
  std::string gateway;           // Empty when none.
  std::optional<int> interface;  // Index into CniResult::interfaces.
};

struct CniResult {
  std::string cniVersion;
  std::vector<CniInterface> interfaces;
  std::vector<CniIpConfig> ips;
  // The whole result as read or as the plugin printed it: routes, dns and
  // fields we don't model survive a parse/serialize round trip through it.
  nlohmann::json raw;
};

// Parses one CNI Result object. InvalidInput naming `what` and the bad field.
CniResult parseCniResult(const nlohmann::json& json, std::string_view what = "cni result");
// The Result as JSON: `raw` with the modelled fields written over it.
nlohmann::json cniResultToJson(const CniResult& result);

// Parses a network.status file's content; `null` (Go's nil slice) is an empty list.
std::vector<CniResult> parseNetworkStatus(std::string_view json);
std::string serializeNetworkStatus(const std::vector<CniResult>& results);

// The first IPv4 address of the container's interface (one with a sandbox),
// without its prefix length. Results that name no interfaces fall back to
// their first IPv4 address (libpod's own rule: networkStatus[0].IPs[0]).
std::optional<std::string> requestedIp(const std::vector<CniResult>& results);
// The MAC of the interface requestedIp() comes from (or the first sandbox interface).
std::optional<std::string> requestedMac(const std::vector<CniResult>& results);

// Checks an address, with prefix ("a.b.c.d/n", IPv6 too) when `cidr`.
bool isIpAddress(std::string_view text, bool cidr);

}  // namespace migrate
