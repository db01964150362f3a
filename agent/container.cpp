#include "agent/container.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>

#include "agent/identifiers.h"
#include "common/error.h"
#include "common/files.h"

namespace migrate {

using nlohmann::json;

json ContainerConfig::toJson() const {
  json j = {{"id", id},           {"name", name},       {"imageDigest", imageDigest},
            {"imageName", imageName}, {"args", args},   {"env", env},
            {"workingDir", workingDir}, {"user", user}, {"hostname", hostname},
            {"network", network}, {"createdAt", createdAt}};
  j["idMapping"] = idMapping ? idMapping->toJson() : json();
  return j;
}

ContainerConfig ContainerConfig::fromJson(const json& j) {
  try {
    ContainerConfig c;
    c.id = j.at("id").get<std::string>();
    c.name = j.at("name").get<std::string>();
    c.imageDigest = j.at("imageDigest").get<std::string>();
    c.imageName = j.value("imageName", "");
    c.args = j.at("args").get<std::vector<std::string>>();
    c.env = j.value("env", std::vector<std::string>{});
    c.workingDir = j.value("workingDir", "");
    c.user = j.value("user", "");
    c.hostname = j.value("hostname", "");
    c.network = j.value("network", false);
    c.createdAt = j.value("createdAt", "");
    // Absent or null: the host's user namespace (records older than user namespaces).
    if (j.contains("idMapping") && !j["idMapping"].is_null()) c.idMapping = IdMapping::fromJson(j["idMapping"], "idMapping");
    return c;
  } catch (const json::exception& e) {
    fail(ErrorKind::InvalidInput, std::string("container config: ") + e.what());
  }
}

namespace {

// Bounds for what a spec may carry from a bundle: far above any real
// container's, far below what would cost this host anything.
constexpr size_t kMaxArgs = 4096;
constexpr size_t kMaxEnv = 4096;
constexpr size_t kMaxStringBytes = 128 * 1024;
constexpr size_t kMaxListBytes = 1024 * 1024;
constexpr size_t kMaxPathBytes = 4096;

[[noreturn]] void refuseField(const std::string& field, const std::string& rule) {
  fail(ErrorKind::InvalidInput, "config.dump: `" + field + "` " + rule);
}

bool hasNul(const std::string& s) { return s.find('\0') != std::string::npos; }

void checkStrings(const std::vector<std::string>& list, const std::string& field, size_t maxCount) {
  if (list.size() > maxCount) refuseField(field, "has " + std::to_string(list.size()) + " entries, more than " + std::to_string(maxCount));
  size_t total = 0;
  for (size_t i = 0; i < list.size(); ++i) {
    auto at = field + "[" + std::to_string(i) + "]";
    if (hasNul(list[i])) refuseField(at, "contains a NUL byte");
    if (list[i].size() > kMaxStringBytes) refuseField(at, "is longer than " + std::to_string(kMaxStringBytes) + " bytes");
    total += list[i].size();
  }
  if (total > kMaxListBytes) refuseField(field, "holds more than " + std::to_string(kMaxListBytes) + " bytes");
}

// "uid[:gid]", each a decimal number below 2^32 - 1 (the kernel's "no id").
bool isNumericUser(const std::string& user) {
  auto isId = [](std::string_view s) {
    if (s.empty() || s.size() > 10 || !std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; })) return false;
    return std::stoull(std::string(s)) < 0xffffffffull;
  };
  auto colon = user.find(':');
  if (colon == std::string::npos) return isId(user);
  return isId(std::string_view(user).substr(0, colon)) && isId(std::string_view(user).substr(colon + 1));
}

// Each of uid and gid below the mapping's size (the process must exist in
// the container's user namespace). `user` is numeric (isNumericUser).
bool userFitsMapping(const std::string& user, const IdMapping& mapping) {
  auto colon = user.find(':');
  auto fits = [&](const std::string& id) { return std::stoull(id) < mapping.size; };
  return fits(user.substr(0, colon)) && (colon == std::string::npos || fits(user.substr(colon + 1)));
}

}  // namespace

void checkContainerUser(const std::string& user, const std::optional<IdMapping>& mapping, const std::string& what) {
  if (user.empty()) return;
  if (!isNumericUser(user)) fail(ErrorKind::InvalidInput, what + " " + quotedForMessage(user) + " must be numeric uid[:gid]");
  if (mapping && !userFitsMapping(user, *mapping)) {
    fail(ErrorKind::InvalidInput, what + " " + quotedForMessage(user) + " is not one of the container's " +
                                      std::to_string(mapping->size) + " ids (its user namespace maps 0-" +
                                      std::to_string(mapping->size - 1) + ")");
  }
}

void checkUntrustedConfig(const ContainerConfig& c) {
  checkContainerId(c.id, "config.dump: `id`");
  checkContainerName(c.name, "config.dump: `name`");
  checkImageDigest(c.imageDigest, "config.dump: `imageDigest`");
  if (c.args.empty()) refuseField("args", "is empty: there is no command to run");
  checkStrings(c.args, "args", kMaxArgs);
  checkStrings(c.env, "env", kMaxEnv);
  for (size_t i = 0; i < c.env.size(); ++i) {
    auto eq = c.env[i].find('=');
    if (eq == 0 || eq == std::string::npos) refuseField("env[" + std::to_string(i) + "]", "is not KEY=VALUE");
  }
  if (!c.workingDir.empty()) {
    if (c.workingDir[0] != '/' || hasNul(c.workingDir) || c.workingDir.size() > kMaxPathBytes) {
      refuseField("workingDir", quotedForMessage(c.workingDir) + " must be an absolute path of at most " +
                                    std::to_string(kMaxPathBytes) + " bytes");
    }
  }
  checkContainerUser(c.user, c.idMapping, "config.dump: `user`");
  if (!c.hostname.empty()) checkHostName(c.hostname, "config.dump: `hostname`");
  if (c.imageName.size() > 255 || hasNul(c.imageName)) refuseField("imageName", "is not an image name");
  if (c.createdAt.size() > 64 || hasNul(c.createdAt)) refuseField("createdAt", "is not a time");
}

std::string statusName(ContainerStatus status) {
  switch (status) {
    case ContainerStatus::Created: return "created";
    case ContainerStatus::Running: return "running";
    case ContainerStatus::Stopped: return "stopped";
    case ContainerStatus::Checkpointed: return "checkpointed";
  }
  return "unknown";
}

ContainerStatus statusFromName(const std::string& name) {
  for (auto s : {ContainerStatus::Created, ContainerStatus::Running, ContainerStatus::Stopped,
                 ContainerStatus::Checkpointed}) {
    if (statusName(s) == name) return s;
  }
  fail(ErrorKind::InvalidInput, "unknown container status `" + name + "`");
}

json ContainerState::toJson() const {
  json j = {{"status", statusName(status)}, {"pid", pid},          {"netns", netns},
            {"ip", ip},                     {"mac", mac},          {"networkStatus", networkStatus},
            {"startedAt", startedAt},       {"checkpointedAt", checkpointedAt},
            {"checkpointTcpEstablished", checkpointTcpEstablished}, {"migrationId", migrationId}};
  j["exitCode"] = exitCode ? json(*exitCode) : json(nullptr);
  return j;
}

ContainerState ContainerState::fromJson(const json& j) {
  try {
    ContainerState s;
    s.status = statusFromName(j.at("status").get<std::string>());
    s.pid = j.value("pid", 0);
    s.netns = j.value("netns", "");
    s.ip = j.value("ip", "");
    s.mac = j.value("mac", "");
    s.networkStatus = j.value("networkStatus", json::array());
    s.startedAt = j.value("startedAt", "");
    s.checkpointedAt = j.value("checkpointedAt", "");
    s.checkpointTcpEstablished = j.value("checkpointTcpEstablished", false);
    s.migrationId = j.value("migrationId", "");
    if (j.contains("exitCode") && j["exitCode"].is_number_integer()) s.exitCode = j["exitCode"].get<int>();
    return s;
  } catch (const json::exception& e) {
    fail(ErrorKind::InvalidInput, std::string("container state: ") + e.what());
  }
}

json Container::toJson() const {
  json j = config.toJson();
  j["state"] = state.toJson();
  j["dir"] = paths.dir.string();
  return j;
}

std::string newContainerId() {
  unsigned char bytes[16];
  Fd fd = openOrFail("/dev/urandom", O_RDONLY);
  if (::read(fd.get(), bytes, sizeof bytes) != static_cast<ssize_t>(sizeof bytes)) fail("read /dev/urandom");
  char hex[33];
  for (int i = 0; i < 16; ++i) std::snprintf(hex + 2 * i, 3, "%02x", bytes[i]);
  return std::string(hex, 32);
}

}  // namespace migrate
