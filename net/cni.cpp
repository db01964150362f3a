#include "net/cni.h"

#include <arpa/inet.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdint>

#include "common/error.h"
#include "common/files.h"
#include "common/log.h"
#include "common/subprocess.h"
#include "net/netns.h"

namespace migrate {

using nlohmann::json;

namespace {

// "1.0.0" -> {1, 0, 0}; missing parts are 0, garbage is 0.
std::array<int, 3> versionParts(std::string_view version) {
  std::array<int, 3> parts{0, 0, 0};
  size_t i = 0;
  for (auto& part : parts) {
    int value = 0;
    while (i < version.size() && version[i] >= '0' && version[i] <= '9') value = value * 10 + (version[i++] - '0');
    part = value;
    if (i < version.size() && version[i] == '.') ++i;
  }
  return parts;
}

bool versionAtLeast(std::string_view version, std::string_view minimum) {
  return versionParts(version) >= versionParts(minimum);
}

bool isPlainName(std::string_view name) {
  return !name.empty() && name != "." && name != ".." && name.find('/') == std::string_view::npos;
}

void validateAttachment(const CniAttachment& a) {
  // CNI spec: the container ID is alphanumeric plus `_`, `.` and `-`; it ends
  // up in file names (host-local's store, our cache).
  bool idOk = !a.containerId.empty() && std::all_of(a.containerId.begin(), a.containerId.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' || c == '-';
  });
  if (!idOk) fail(ErrorKind::InvalidInput, "cni: bad container id `" + a.containerId + "`");
  bool ifOk = !a.ifname.empty() && a.ifname.size() < 16 && isPlainName(a.ifname) &&
              a.ifname.find_first_of(": \t\n") == std::string::npos;
  if (!ifOk) fail(ErrorKind::InvalidInput, "cni: bad interface name `" + a.ifname + "`");
  if (a.ip && !isIpAddress(*a.ip, false))
    fail(ErrorKind::InvalidInput, "cni: requested IP `" + *a.ip + "` is not an address");
}

// --- host-local: admitting a requested IP from outside the host's range ---

struct Ipv4Net {
  uint32_t base = 0;
  uint32_t mask = 0;
};

std::optional<uint32_t> parseIpv4(const std::string& text) {
  in_addr a{};
  if (::inet_pton(AF_INET, text.c_str(), &a) != 1) return std::nullopt;
  return ntohl(a.s_addr);
}

std::optional<Ipv4Net> parseIpv4Net(const std::string& cidr) {
  auto slash = cidr.find('/');
  if (slash == std::string::npos) return std::nullopt;
  auto base = parseIpv4(cidr.substr(0, slash));
  int prefix = std::atoi(cidr.c_str() + slash + 1);
  if (!base || prefix < 0 || prefix > 32) return std::nullopt;
  uint32_t mask = prefix == 0 ? 0 : ~uint32_t{0} << (32 - prefix);
  return Ipv4Net{*base & mask, mask};
}

std::string stringField(const json& object, const char* key) {
  auto it = object.find(key);
  return it != object.end() && it->is_string() ? it->get<std::string>() : std::string();
}

// Whether `range` (host-local's {subnet, rangeStart, rangeEnd}) holds `ip`:
// returns {in subnet, in start..end}.
std::pair<bool, bool> rangeHolds(const json& range, uint32_t ip) {
  auto net = parseIpv4Net(stringField(range, "subnet"));
  if (!net || (ip & net->mask) != net->base) return {false, false};
  auto start = parseIpv4(stringField(range, "rangeStart"));
  auto end = parseIpv4(stringField(range, "rangeEnd"));
  bool inRange = (!start || ip >= *start) && (!end || ip <= *end);
  return {true, inRange};
}

void admitRequestedIp(json& ipam, const std::string& requested) {
  auto ip = parseIpv4(requested);
  if (!ip || stringField(ipam, "type") != "host-local") return;
  if (auto ranges = ipam.find("ranges"); ranges != ipam.end() && ranges->is_array()) {
    for (auto& set : *ranges) {
      if (!set.is_array()) continue;
      const json* widen = nullptr;
      bool held = false;
      for (auto& range : set) {
        if (!range.is_object()) continue;
        auto [inSubnet, inRange] = rangeHolds(range, *ip);
        held = held || inRange;
        if (inSubnet && !widen) widen = &range;
      }
      if (held) return;
      if (widen) {
        json whole = {{"subnet", (*widen)["subnet"]}};
        if (widen->contains("gateway")) whole["gateway"] = (*widen)["gateway"];
        set = json::array({whole});
        return;
      }
    }
  } else if (ipam.contains("subnet")) {
    auto [inSubnet, inRange] = rangeHolds(ipam, *ip);
    if (inSubnet && !inRange) {
      ipam.erase("rangeStart");
      ipam.erase("rangeEnd");
    }
  }
}

bool declaresCapability(const json& plugin, const char* key) {
  auto caps = plugin.find("capabilities");
  if (caps == plugin.end() || !caps->is_object()) return false;
  auto it = caps->find(key);
  return it != caps->end() && it->is_boolean() && it->get<bool>();
}

bool boolField(const json& object, const char* key) {
  auto it = object.find(key);
  return it != object.end() && it->is_boolean() && it->get<bool>();
}

// --- plugin errors ---

ErrorKind kindOfPluginError(int code, const std::string& text) {
  static const char* const kTaken[] = {"already allocated", "in use", "not available", "already exists", "duplicate"};
  for (auto* pattern : kTaken) {
    if (text.find(pattern) != std::string::npos) return ErrorKind::Conflict;
  }
  // The spec's well-known codes: 1 incompatible version; 2 unsupported field,
  // 4 bad environment, 6 undecodable config, 7 invalid network config; 11 try later.
  switch (code) {
    case 1:
      return ErrorKind::Unimplemented;
    case 2:
    case 4:
    case 6:
    case 7:
      return ErrorKind::InvalidInput;
    case 11:
      return ErrorKind::Overloaded;
    default:
      return ErrorKind::Failed;
  }
}

std::string trimmed(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

}  // namespace

CniNetwork CniNetwork::parse(std::string_view text, std::string_view origin) {
  std::string what = "cni: network config " + std::string(origin);
  json j;
  try {
    j = json::parse(text);
  } catch (const json::parse_error& e) {
    fail(ErrorKind::InvalidInput, what + ": not valid JSON: " + e.what());
  }
  if (!j.is_object()) fail(ErrorKind::InvalidInput, what + ": not a JSON object");
  CniNetwork network;
  network.name = stringField(j, "name");
  if (network.name.empty()) fail(ErrorKind::InvalidInput, what + ": `name` is missing");
  network.cniVersion = stringField(j, "cniVersion");
  if (network.cniVersion.empty()) fail(ErrorKind::InvalidInput, what + ": `cniVersion` is missing");

  if (!j.contains("plugins")) {
    // A single-plugin .conf: the same thing as a one-entry conflist.
    json plugin = j;
    plugin.erase("name");
    plugin.erase("cniVersion");
    j = {{"cniVersion", network.cniVersion}, {"name", network.name}, {"plugins", json::array({plugin})}};
  }
  auto& plugins = j["plugins"];
  if (!plugins.is_array() || plugins.empty())
    fail(ErrorKind::InvalidInput, what + ": `plugins` is not a non-empty array");
  for (size_t i = 0; i < plugins.size(); ++i) {
    auto type = plugins[i].is_object() ? stringField(plugins[i], "type") : std::string();
    // The type names an executable in the plugin dirs: never a path.
    if (!isPlainName(type)) {
      fail(ErrorKind::InvalidInput, what + ": plugins[" + std::to_string(i) + "] has no valid `type`");
    }
    if (plugins[i].contains("capabilities") && !plugins[i]["capabilities"].is_object()) {
      fail(ErrorKind::InvalidInput, what + ": plugins[" + std::to_string(i) + "]: `capabilities` is not an object");
    }
  }
  network.conflist = std::move(j);
  return network;
}

CniNetwork CniNetwork::load(const fs::path& file) {
  auto text = readFileIfExists(file);
  if (!text) fail(ErrorKind::NotFound, "cni: network config `" + file.string() + "` does not exist");
  return parse(*text, "`" + file.string() + "`");
}

CniClient::CniClient(std::vector<fs::path> pluginDirs, fs::path cacheDir, std::optional<fs::path> hostNetns)
    : pluginDirs_(std::move(pluginDirs)), cacheDir_(std::move(cacheDir)), hostNetns_(std::move(hostNetns)) {}

fs::path CniClient::findPlugin(const std::string& type) const {
  for (auto& dir : pluginDirs_) {
    auto candidate = dir / type;
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  std::string dirs;
  for (auto& dir : pluginDirs_) dirs += (dirs.empty() ? "" : ":") + dir.string();
  fail(ErrorKind::NotFound, "cni: plugin `" + type + "` not found in " + dirs);
}

fs::path CniClient::cacheFile(const CniNetwork& network, const CniAttachment& a) const {
  return cacheDir_ / "results" / (network.name + "-" + a.containerId + "-" + a.ifname);
}

json CniClient::invoke(const std::string& command, const CniNetwork& network, const json& plugin,
                       const CniAttachment& a, const std::optional<json>& prevResult) {
  std::string type = plugin["type"].get<std::string>();

  // The config a plugin sees (libcni's buildOneConfig): its own object plus
  // the network's name and version, the previous result, and runtimeConfig
  // for the capabilities it declares.
  json config = plugin;
  config["name"] = network.name;
  config["cniVersion"] = network.cniVersion;
  if (prevResult) config["prevResult"] = *prevResult;
  json runtimeConfig = json::object();
  if (a.ip && declaresCapability(plugin, "ips")) runtimeConfig["ips"] = json::array({*a.ip});
  if (a.mac && declaresCapability(plugin, "mac")) runtimeConfig["mac"] = *a.mac;
  if (!runtimeConfig.empty()) config["runtimeConfig"] = runtimeConfig;
  if (command != "DEL" && a.ip && config.contains("ipam") && config["ipam"].is_object()) {
    admitRequestedIp(config["ipam"], *a.ip);
  }

  std::string cniPath;
  for (auto& dir : pluginDirs_) cniPath += (cniPath.empty() ? "" : ":") + dir.string();
  // On DEL the netns may be gone; an empty CNI_NETNS tells the plugins to
  // release what they hold outside it (IPAM) and skip the rest.
  std::string netns = a.netns.string();
  if (command == "DEL" && !netnsExists(a.netns)) netns.clear();

  SubprocessOptions options;
  options.args = {findPlugin(type).string()};
  options.env = {{"CNI_COMMAND", command}, {"CNI_CONTAINERID", a.containerId}, {"CNI_NETNS", netns},
                 {"CNI_IFNAME", a.ifname}, {"CNI_ARGS", "IgnoreUnknown=1"},    {"CNI_PATH", cniPath}};
  RunResult result;
  auto runPlugin = [&]() { result = runCapture(options, config.dump()); };
  if (hostNetns_) {
    runInNetns(*hostNetns_, runPlugin);
  } else {
    runPlugin();
  }

  std::string what = "cni: " + type + " " + command + " for `" + a.containerId + "`";
  if (result.status != 0) {
    // The spec's error object: {"code", "msg", "details"} on stdout.
    json error = json::parse(result.out, nullptr, false);
    if (error.is_object() && error.contains("msg")) {
      std::string msg = stringField(error, "msg");
      std::string details = stringField(error, "details");
      int code = error["code"].is_number_integer() ? error["code"].get<int>() : 0;
      std::string text = msg + (details.empty() ? "" : ": " + details);
      fail(kindOfPluginError(code, text), what + " failed: " + text);
    }
    fail(what + " failed: exited " + std::to_string(result.status) + ": " +
         trimmed(result.err.empty() ? result.out : result.err));
  }
  if (command != "ADD") return nullptr;
  json out = json::parse(result.out, nullptr, false);
  if (!out.is_object()) fail(what + " printed no result: `" + trimmed(result.out) + "`");
  return out;
}

CniResult CniClient::add(const CniNetwork& network, const CniAttachment& a) {
  validateAttachment(a);
  const auto& plugins = network.conflist["plugins"];
  auto declaredAnywhere = [&](const char* key) {
    return std::any_of(plugins.begin(), plugins.end(), [&](const json& p) { return declaresCapability(p, key); });
  };
  // Silently ignoring a requested address would break the migration later
  // and far away; refuse here instead.
  if (a.ip && !declaredAnywhere("ips")) {
    fail(ErrorKind::Unimplemented,
         "cni: network `" + network.name + "` can't honour a requested IP: no plugin declares the `ips` capability");
  }
  if (a.mac && !declaredAnywhere("mac")) {
    fail(ErrorKind::Unimplemented,
         "cni: network `" + network.name + "` can't honour a requested MAC: no plugin declares the `mac` capability");
  }

  // Find every plugin before running any, so a missing one leaves nothing to undo.
  for (auto& p : plugins) findPlugin(p["type"].get<std::string>());

  std::optional<json> prev;
  size_t ran = 0;
  try {
    for (; ran < plugins.size(); ++ran) prev = invoke("ADD", network, plugins[ran], a, prev);
    CniResult result = parseCniResult(*prev, "cni: result of ADD for `" + a.containerId + "`");
    json cache = {{"kind", "cniCacheV1"},        {"containerId", a.containerId}, {"ifName", a.ifname},
                  {"networkName", network.name}, {"netns", a.netns.string()},    {"result", *prev}};
    auto file = cacheFile(network, a);
    fs::create_directories(file.parent_path());
    writeFileAtomic(file, cache.dump(2), 0600);
    return result;
  } catch (const std::exception&) {
    // The failing plugin may have half-attached (the bridge plugin leaves its
    // veth when IPAM refuses), so undo it too, newest first.
    for (size_t i = std::min(ran + 1, plugins.size()); i-- > 0;) {
      try {
        invoke("DEL", network, plugins[i], a, versionAtLeast(network.cniVersion, "0.4.0") ? prev : std::nullopt);
      } catch (const std::exception& e) {
        logWarn(std::string("cni: undoing a failed ADD: ") + e.what());
      }
    }
    throw;
  }
}

void CniClient::check(const CniNetwork& network, const CniAttachment& a, const CniResult& prev) {
  validateAttachment(a);
  if (!versionAtLeast(network.cniVersion, "0.4.0")) {
    fail(ErrorKind::Unimplemented,
         "cni: CHECK needs cniVersion 0.4.0 or newer; network `" + network.name + "` is " + network.cniVersion);
  }
  if (boolField(network.conflist, "disableCheck")) return;
  json prevJson = cniResultToJson(prev);
  for (auto& plugin : network.conflist["plugins"]) invoke("CHECK", network, plugin, a, prevJson);
}

void CniClient::del(const CniNetwork& network, const CniAttachment& a, std::optional<CniResult> prev) {
  validateAttachment(a);
  if (!prev) prev = cachedResult(network, a);
  std::optional<json> prevJson;
  if (prev && versionAtLeast(network.cniVersion, "0.4.0")) prevJson = cniResultToJson(*prev);
  const auto& plugins = network.conflist["plugins"];
  std::exception_ptr first;
  for (size_t i = plugins.size(); i-- > 0;) {
    try {
      invoke("DEL", network, plugins[i], a, prevJson);
    } catch (const std::exception&) {
      if (!first) first = std::current_exception();
    }
  }
  if (first) std::rethrow_exception(first);
  std::error_code ignored;
  fs::remove(cacheFile(network, a), ignored);
}

std::optional<CniResult> CniClient::cachedResult(const CniNetwork& network, const CniAttachment& a) const {
  auto file = cacheFile(network, a);
  auto text = readFileIfExists(file);
  if (!text) return std::nullopt;
  json cache = json::parse(*text, nullptr, false);
  if (!cache.is_object() || !cache.contains("result")) {
    logWarn("cni: ignoring unreadable cache file " + file.string());
    return std::nullopt;
  }
  return parseCniResult(cache["result"], "cni: cached result " + file.string());
}

}  // namespace migrate
