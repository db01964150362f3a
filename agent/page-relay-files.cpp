#include "agent/page-relay-files.h"

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/files.h"
#include "common/signing.h"

namespace migrate {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string bytesHex(const std::vector<uint8_t>& bytes) {
  return toHex(std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
}

std::vector<uint8_t> hexBytes(const std::string& hex) {
  std::string raw = fromHex(hex);
  return std::vector<uint8_t>(raw.begin(), raw.end());
}

constexpr RelayState kStates[] = {RelayState::Starting, RelayState::Flowing, RelayState::Cut, RelayState::Done,
                                  RelayState::Failed};

}  // namespace

std::string relayStateName(RelayState state) {
  switch (state) {
    case RelayState::Starting: return "starting";
    case RelayState::Flowing: return "flowing";
    case RelayState::Cut: return "cut";
    case RelayState::Done: return "done";
    case RelayState::Failed: return "failed";
  }
  return "failed";
}

fs::path relayDirectory(const fs::path& stateDir, const std::string& migrationId) {
  return stateDir / "relays" / migrationId;
}

void writeRelaySpec(const fs::path& dir, const PageRelaySpec& s) {
  json j = {
      {"role", s.role == RelayRole::Source ? "source" : "target"},
      {"migrationId", s.migrationId},
      {"containerName", s.containerName},
      {"psk", bytesHex(s.psk)},
      {"targetAddress", s.targetAddress},
      {"targetPort", s.targetPort},
      {"criuPort", s.criuPort},
      {"runcPid", s.runcPid},
      {"listenAddress", s.listenAddress},
      {"lazyPagesArgs", s.lazyPagesArgs},
      {"lazyPagesSocket", s.lazyPagesSocket},
      {"imagesDir", s.imagesDir},
      {"cgroup", s.cgroup},
      {"relayCgroup", s.relayCgroup},
  };
  writeFileAtomic(dir / "spec.json", j.dump(2), 0600);
}

PageRelaySpec readRelaySpec(const fs::path& dir) {
  ErrorContext context("page relay spec " + (dir / "spec.json").string());
  json j = json::parse(readFile(dir / "spec.json"));
  PageRelaySpec s;
  s.role = j.at("role").get<std::string>() == "source" ? RelayRole::Source : RelayRole::Target;
  s.migrationId = j.at("migrationId").get<std::string>();
  s.containerName = j.at("containerName").get<std::string>();
  s.psk = hexBytes(j.at("psk").get<std::string>());
  s.targetAddress = j.at("targetAddress").get<std::string>();
  s.targetPort = j.at("targetPort").get<uint16_t>();
  s.criuPort = j.at("criuPort").get<uint16_t>();
  s.runcPid = j.at("runcPid").get<pid_t>();
  s.listenAddress = j.at("listenAddress").get<std::string>();
  s.lazyPagesArgs = j.at("lazyPagesArgs").get<std::vector<std::string>>();
  s.lazyPagesSocket = j.at("lazyPagesSocket").get<std::string>();
  s.imagesDir = j.value("imagesDir", std::string());
  s.cgroup = j.at("cgroup").get<std::string>();
  s.relayCgroup = j.value("relayCgroup", std::string());
  return s;
}

void writeRelayStatus(const fs::path& dir, const PageRelayStatus& s) {
  json j = {
      {"state", relayStateName(s.state)},
      {"error", s.error},
      {"bytesPages", s.bytesPages},
      {"outstanding", s.outstanding},
      {"reconnects", s.reconnects},
      {"cutSinceMs", s.cutSinceMs},
      {"containerFrozen", s.containerFrozen},
      {"lazyPagesReady", s.lazyPagesReady},
      {"uffdsHeld", s.uffdsHeld},
      {"localFd", s.localFd},
      {"pid", s.pid},
      {"lazyPagesPid", s.lazyPagesPid},
  };
  writeFileAtomic(dir / "status.json", j.dump(), 0600);
}

std::optional<PageRelayStatus> readRelayStatus(const fs::path& dir) {
  auto text = readFileIfExists(dir / "status.json");
  if (!text) return std::nullopt;
  ErrorContext context("page relay status " + (dir / "status.json").string());
  json j = json::parse(*text);
  PageRelayStatus s;
  std::string state = j.at("state").get<std::string>();
  s.state = RelayState::Failed;
  for (auto candidate : kStates) {
    if (relayStateName(candidate) == state) s.state = candidate;
  }
  s.error = j.at("error").get<std::string>();
  s.bytesPages = j.at("bytesPages").get<uint64_t>();
  s.outstanding = j.at("outstanding").get<uint32_t>();
  s.reconnects = j.value("reconnects", 0u);
  s.cutSinceMs = j.at("cutSinceMs").get<int64_t>();
  s.containerFrozen = j.at("containerFrozen").get<bool>();
  s.lazyPagesReady = j.at("lazyPagesReady").get<bool>();
  s.uffdsHeld = j.at("uffdsHeld").get<uint32_t>();
  s.localFd = j.at("localFd").get<int>();
  s.pid = j.at("pid").get<pid_t>();
  s.lazyPagesPid = j.at("lazyPagesPid").get<pid_t>();
  return s;
}

void writeRelayKey(const fs::path& dir, const std::vector<uint8_t>& psk) {
  writeFileAtomic(dir / "key", bytesHex(psk), 0600);
}

std::optional<std::vector<uint8_t>> readRelayKey(const fs::path& dir) {
  auto text = readFileIfExists(dir / "key");
  if (!text) return std::nullopt;
  return hexBytes(*text);
}

}  // namespace migrate
