#include "net/network-status.h"

#include <arpa/inet.h>

#include <charconv>

#include "common/error.h"
#include "common/untrusted-json.h"

namespace migrate {

using nlohmann::json;

namespace {

[[noreturn]] void bad(std::string_view what, const std::string& message) {
  fail(ErrorKind::InvalidInput, std::string(what) + ": " + message);
}

std::string optionalString(const json& object, const char* key, std::string_view what) {
  auto it = object.find(key);
  if (it == object.end() || it->is_null()) return {};
  if (!it->is_string()) bad(what, std::string("`") + key + "` is not a string");
  return it->get<std::string>();
}

bool isMac(std::string_view text) {
  // Hex pairs separated by colons: 6 for Ethernet, 20 for InfiniBand.
  if (text.size() % 3 != 2) return false;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    bool hex = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
    if (i % 3 == 2 ? c != ':' : !hex) return false;
  }
  return text.size() >= 17;
}

bool isIpv4(std::string_view address) {
  return address.find(':') == std::string_view::npos;
}

std::string withoutPrefix(const std::string& cidr) {
  return cidr.substr(0, cidr.find('/'));
}

bool isSandboxInterface(const CniResult& result, const std::optional<int>& index) {
  return index && *index >= 0 && static_cast<size_t>(*index) < result.interfaces.size() &&
         !result.interfaces[static_cast<size_t>(*index)].sandbox.empty();
}

struct Chosen {
  const CniResult* result;
  const CniIpConfig* ip;
};

std::optional<Chosen> chooseContainerIpv4(const std::vector<CniResult>& results) {
  for (auto& r : results) {
    for (auto& ip : r.ips) {
      if (isIpv4(ip.address) && isSandboxInterface(r, ip.interface)) return Chosen{&r, &ip};
    }
  }
  for (auto& r : results) {
    for (auto& ip : r.ips) {
      if (isIpv4(ip.address) && !ip.interface) return Chosen{&r, &ip};
    }
  }
  return std::nullopt;
}

}  // namespace

bool isIpAddress(std::string_view text, bool cidr) {
  std::string address(text);
  std::optional<int> prefix;
  if (cidr) {
    auto slash = address.find('/');
    if (slash == std::string::npos) return false;
    std::string_view digits = std::string_view(address).substr(slash + 1);
    int value = -1;
    auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
    if (ec != std::errc() || end != digits.data() + digits.size() || digits.empty()) return false;
    prefix = value;
    address.resize(slash);
  }
  unsigned char buf[16];
  bool v4 = ::inet_pton(AF_INET, address.c_str(), buf) == 1;
  bool v6 = !v4 && ::inet_pton(AF_INET6, address.c_str(), buf) == 1;
  if (!v4 && !v6) return false;
  return !prefix || (*prefix >= 0 && *prefix <= (v4 ? 32 : 128));
}

CniResult parseCniResult(const json& j, std::string_view what) {
  if (!j.is_object()) bad(what, "not a JSON object");
  CniResult result;
  result.raw = j;
  result.cniVersion = optionalString(j, "cniVersion", what);

  if (auto it = j.find("interfaces"); it != j.end() && !it->is_null()) {
    if (!it->is_array()) bad(what, "`interfaces` is not an array");
    for (size_t i = 0; i < it->size(); ++i) {
      std::string where = std::string(what) + ": interfaces[" + std::to_string(i) + "]";
      const json& entry = (*it)[i];
      if (!entry.is_object()) bad(where, "not a JSON object");
      CniInterface iface;
      iface.name = optionalString(entry, "name", where);
      if (iface.name.empty()) bad(where, "`name` is missing");
      iface.mac = optionalString(entry, "mac", where);
      if (!iface.mac.empty() && !isMac(iface.mac)) bad(where, "`mac` `" + iface.mac + "` is not a MAC address");
      iface.sandbox = optionalString(entry, "sandbox", where);
      result.interfaces.push_back(std::move(iface));
    }
  }

  if (auto it = j.find("ips"); it != j.end() && !it->is_null()) {
    if (!it->is_array()) bad(what, "`ips` is not an array");
    for (size_t i = 0; i < it->size(); ++i) {
      std::string where = std::string(what) + ": ips[" + std::to_string(i) + "]";
      const json& entry = (*it)[i];
      if (!entry.is_object()) bad(where, "not a JSON object");
      CniIpConfig ip;
      ip.address = optionalString(entry, "address", where);
      if (ip.address.empty()) bad(where, "`address` is missing");
      if (!isIpAddress(ip.address, true)) {
        bad(where, "`address` `" + ip.address + "` is not an address in CIDR notation");
      }
      ip.gateway = optionalString(entry, "gateway", where);
      if (!ip.gateway.empty() && !isIpAddress(ip.gateway, false)) {
        bad(where, "`gateway` `" + ip.gateway + "` is not an address");
      }
      if (auto idx = entry.find("interface"); idx != entry.end() && !idx->is_null()) {
        if (!idx->is_number_integer()) bad(where, "`interface` is not an integer");
        auto value = idx->get<int64_t>();
        if (value < 0 || static_cast<size_t>(value) >= result.interfaces.size()) {
          bad(where, "`interface` " + std::to_string(value) + " is not an index into `interfaces` (" +
                         std::to_string(result.interfaces.size()) + " of them)");
        }
        ip.interface = static_cast<int>(value);
      }
      result.ips.push_back(std::move(ip));
    }
  }
  return result;
}

json cniResultToJson(const CniResult& result) {
  json out = result.raw.is_object() ? result.raw : json::object();
  auto setOrErase = [](json& object, const char* key, const std::string& value) {
    if (value.empty()) {
      object.erase(key);
    } else {
      object[key] = value;
    }
  };
  setOrErase(out, "cniVersion", result.cniVersion);

  // Each entry starts from its raw twin so unmodelled keys (mtu, version) stay.
  auto rawEntry = [&](const char* list, size_t i) {
    auto it = result.raw.is_object() ? result.raw.find(list) : result.raw.end();
    if (result.raw.is_object() && it != result.raw.end() && it->is_array() && i < it->size() && (*it)[i].is_object()) {
      return (*it)[i];
    }
    return json(json::object());
  };
  json interfaces = json::array();
  for (size_t i = 0; i < result.interfaces.size(); ++i) {
    auto& iface = result.interfaces[i];
    json entry = rawEntry("interfaces", i);
    entry["name"] = iface.name;
    setOrErase(entry, "mac", iface.mac);
    setOrErase(entry, "sandbox", iface.sandbox);
    interfaces.push_back(std::move(entry));
  }
  if (!interfaces.empty() || out.contains("interfaces")) out["interfaces"] = std::move(interfaces);

  json ips = json::array();
  for (size_t i = 0; i < result.ips.size(); ++i) {
    auto& ip = result.ips[i];
    json entry = rawEntry("ips", i);
    entry["address"] = ip.address;
    setOrErase(entry, "gateway", ip.gateway);
    if (ip.interface) {
      entry["interface"] = *ip.interface;
    } else {
      entry.erase("interface");
    }
    ips.push_back(std::move(entry));
  }
  if (!ips.empty() || out.contains("ips")) out["ips"] = std::move(ips);
  return out;
}

std::vector<CniResult> parseNetworkStatus(std::string_view text) {
  json j = parseUntrustedJson(text, "network.status");
  std::vector<CniResult> results;
  if (j.is_null()) return results;
  if (!j.is_array()) fail(ErrorKind::InvalidInput, "network.status: not a JSON array of CNI results");
  for (size_t i = 0; i < j.size(); ++i) {
    results.push_back(parseCniResult(j[i], "network.status: entry " + std::to_string(i)));
  }
  return results;
}

std::string serializeNetworkStatus(const std::vector<CniResult>& results) {
  json out = json::array();
  for (auto& r : results) out.push_back(cniResultToJson(r));
  return out.dump(4) + "\n";
}

std::optional<std::string> requestedIp(const std::vector<CniResult>& results) {
  auto chosen = chooseContainerIpv4(results);
  if (!chosen) return std::nullopt;
  return withoutPrefix(chosen->ip->address);
}

std::optional<std::string> requestedMac(const std::vector<CniResult>& results) {
  if (auto chosen = chooseContainerIpv4(results); chosen && chosen->ip->interface) {
    auto& iface = chosen->result->interfaces[static_cast<size_t>(*chosen->ip->interface)];
    if (!iface.mac.empty()) return iface.mac;
  }
  for (auto& r : results) {
    for (auto& iface : r.interfaces) {
      if (!iface.sandbox.empty() && !iface.mac.empty()) return iface.mac;
    }
  }
  return std::nullopt;
}

}  // namespace migrate
