#include "agent/container.h"

#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include <cstdio>

#include "common/error.h"
#include "common/files.h"

namespace migrate {

using nlohmann::json;

json ContainerConfig::toJson() const {
  return {{"id", id},           {"name", name},       {"imageDigest", imageDigest},
          {"imageName", imageName}, {"args", args},   {"env", env},
          {"workingDir", workingDir}, {"user", user}, {"hostname", hostname},
          {"network", network}, {"createdAt", createdAt}};
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
    return c;
  } catch (const json::exception& e) {
    fail(ErrorKind::InvalidInput, std::string("container config: ") + e.what());
  }
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

std::string nowIso8601() {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm;
  gmtime_r(&ts.tv_sec, &tm);
  char buf[40];
  strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  char out[64];
  std::snprintf(out, sizeof out, "%s.%03ldZ", buf, ts.tv_nsec / 1000000);
  return out;
}

}  // namespace migrate
