#include "agent/bundle.h"

#include "agent/identifiers.h"
#include "common/error.h"

namespace migrate {

namespace {

template <typename T>
T field(const nlohmann::json& json, const char* name) {
  auto it = json.find(name);
  if (it == json.end()) fail(ErrorKind::InvalidInput, std::string("bundle manifest: missing field `") + name + "`");
  bool ok;
  if constexpr (std::is_same_v<T, std::string>) {
    ok = it->is_string();
  } else if constexpr (std::is_same_v<T, bool>) {
    ok = it->is_boolean();
  } else if constexpr (std::is_same_v<T, uint64_t>) {
    ok = it->is_number_unsigned() || (it->is_number_integer() && it->template get<int64_t>() >= 0);
  } else {
    ok = it->is_number_integer() && it->template get<int64_t>() >= INT32_MIN && it->template get<int64_t>() <= INT32_MAX;
  }
  if (!ok) fail(ErrorKind::InvalidInput, std::string("bundle manifest: field `") + name + "` has the wrong type");
  return it->template get<T>();
}

}  // namespace

nlohmann::json BundleManifest::toJson() const {
  nlohmann::json j = {
      {"formatVersion", formatVersion},   {"containerName", containerName},
      {"containerId", containerId},       {"imageDigest", imageDigest},
      {"imageName", imageName},           {"sourceHost", sourceHost},
      {"criuVersion", criuVersion},       {"runtimeVersion", runtimeVersion},
      {"createdAt", createdAt},           {"checkpointBytes", checkpointBytes},
      {"rootfsDiffBytes", rootfsDiffBytes}, {"checkpointEntries", checkpointEntries},
      {"rootfsDiffEntries", rootfsDiffEntries}, {"tcpEstablished", tcpEstablished},
  };
  j["idMapping"] = idMapping ? idMapping->toJson() : nlohmann::json();
  return j;
}

BundleManifest BundleManifest::fromJson(const nlohmann::json& json) {
  if (!json.is_object()) fail(ErrorKind::InvalidInput, "bundle manifest: not a JSON object");
  BundleManifest m;
  m.formatVersion = field<int>(json, "formatVersion");
  m.containerName = field<std::string>(json, "containerName");
  m.containerId = field<std::string>(json, "containerId");
  m.imageDigest = field<std::string>(json, "imageDigest");
  m.imageName = field<std::string>(json, "imageName");
  m.sourceHost = field<std::string>(json, "sourceHost");
  m.criuVersion = field<std::string>(json, "criuVersion");
  m.runtimeVersion = field<std::string>(json, "runtimeVersion");
  m.createdAt = field<std::string>(json, "createdAt");
  m.checkpointBytes = field<uint64_t>(json, "checkpointBytes");
  m.rootfsDiffBytes = field<uint64_t>(json, "rootfsDiffBytes");
  m.checkpointEntries = field<uint64_t>(json, "checkpointEntries");
  m.rootfsDiffEntries = field<uint64_t>(json, "rootfsDiffEntries");
  m.tcpEstablished = field<bool>(json, "tcpEstablished");
  // Required, null for the host's user namespace: a writer that leaves it
  // out cannot have its rootfs-diff ids taken as host ids by mistake.
  if (!json.contains("idMapping")) fail(ErrorKind::InvalidInput, "bundle manifest: missing field `idMapping`");
  if (!json["idMapping"].is_null()) m.idMapping = IdMapping::fromJson(json["idMapping"], "bundle manifest: idMapping");
  // Identifiers name directories, log lines and records here: checked now,
  // before anything is written for the bundle.
  checkContainerName(m.containerName, "bundle manifest: `containerName`");
  checkContainerId(m.containerId, "bundle manifest: `containerId`");
  checkImageDigest(m.imageDigest, "bundle manifest: `imageDigest`");
  checkHostName(m.sourceHost, "bundle manifest: `sourceHost`");
  return m;
}

}  // namespace migrate
