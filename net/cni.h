// A CNI client: runs the real plugin binaries through the CNI exec protocol
// (spec 1.0: CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, CNI_ARGS,
// CNI_PATH; the network config on stdin; the Result or an error on stdout).
// A conflist's plugins run in order for ADD and CHECK, in reverse for DEL,
// each given the previous one's result as `prevResult`. Runtime arguments
// reach the plugins that declare the matching capability: "ips" (requested
// IPs) and "mac" (requested MAC), as `runtimeConfig`.
//
// Plugins run in the netns of the calling thread, or in `hostNetns` when the
// client is given one. That must be the HOST's netns (where the bridge of
// the bridge plugin lives), not the container's: the plugins enter the
// container netns (CNI_NETNS) themselves. An agent started with
// `lab.sh exec hostK` needs no hostNetns; tests in the root netns pass one.
#pragma once

#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "net/network-status.h"

namespace migrate {

namespace fs = std::filesystem;

struct CniNetwork {
  std::string name;
  std::string cniVersion;
  // Always in conflist form {"cniVersion", "name", "plugins": [...]}, also
  // when loaded from a single-plugin .conf.
  nlohmann::json conflist;

  // InvalidInput naming the file and the field when the config is malformed;
  // NotFound when the file is missing.
  static CniNetwork load(const fs::path& conflistFile);
  static CniNetwork parse(std::string_view json, std::string_view origin);
};

struct CniAttachment {
  std::string containerId;  // CNI_CONTAINERID: letters, digits, `_`, `.`, `-`.
  fs::path netns;           // CNI_NETNS: a bound netns file (createNetns).
  std::string ifname = "eth0";
  std::optional<std::string> ip;   // Requested IPv4/IPv6 address, no prefix ("ips" capability).
  std::optional<std::string> mac;  // Requested MAC ("mac" capability).
};

class CniClient {
 public:
  // `cacheDir`/results/<network>-<container>-<ifname> keeps each ADD's result
  // (libcni's layout) for a DEL or CHECK that is not given one.
  explicit CniClient(std::vector<fs::path> pluginDirs = {"/usr/lib/cni"}, fs::path cacheDir = "/var/lib/cni",
                     std::optional<fs::path> hostNetns = std::nullopt);

  // Attaches the container. A requested IP that host-local's range excludes
  // but its subnet contains (an address another host of the same segment
  // handed out, arriving with a migration) is admitted by giving that one
  // ADD the whole subnet: host-local allows no overlapping ranges in a set,
  // so a conflist can't say it. Normal allocations stay in the host's range.
  // On failure the plugins already run are undone (DEL), so nothing leaks.
  // Errors: Conflict when a plugin says the address or name is taken.
  CniResult add(const CniNetwork& network, const CniAttachment& attachment);

  // Asks every plugin to verify the attachment against `prev` (cniVersion >= 0.4.0).
  void check(const CniNetwork& network, const CniAttachment& attachment, const CniResult& prev);

  // Detaches. `prev` defaults to the cached ADD result. Succeeds when the
  // netns, the interface or the reservation is already gone. Every plugin
  // runs even if one fails; the first failure is thrown after.
  void del(const CniNetwork& network, const CniAttachment& attachment, std::optional<CniResult> prev);

  std::optional<CniResult> cachedResult(const CniNetwork& network, const CniAttachment& attachment) const;

 private:
  nlohmann::json invoke(const std::string& command, const CniNetwork& network, const nlohmann::json& plugin,
                        const CniAttachment& attachment, const std::optional<nlohmann::json>& prevResult);
  fs::path findPlugin(const std::string& type) const;
  fs::path cacheFile(const CniNetwork& network, const CniAttachment& attachment) const;

  std::vector<fs::path> pluginDirs_;
  fs::path cacheDir_;
  std::optional<fs::path> hostNetns_;
};

}  // namespace migrate
