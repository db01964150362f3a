// A container as the agent knows it: what it was asked to run (config, the
// seed's config.dump) and what became of it (state). Both persist as JSON in
// the container's directory with atomic writes, so a restarted agent finds
// every container again.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "agent/id-mapping.h"

namespace migrate {

namespace fs = std::filesystem;

struct ContainerConfig {
  std::string id;          // 32 hex chars; also the runc id
  std::string name;        // unique on a host; kept across a migration
  std::string imageDigest;
  std::string imageName;
  std::vector<std::string> args;
  std::vector<std::string> env;  // KEY=VALUE, on top of the image's
  std::string workingDir;
  std::string user;              // "uid[:gid]"; empty = image's or root
  std::string hostname;
  bool network = false;          // joins the host's CNI network (else loopback only)
  // Its user namespace (agent/id-mapping.h); none: the host's (--userns=host).
  std::optional<IdMapping> idMapping;
  std::string createdAt;

  nlohmann::json toJson() const;
  static ContainerConfig fromJson(const nlohmann::json& j);
};

// Checks a config that came from outside this host (a bundle's config.dump):
// identifiers by their patterns (agent/identifiers.h), the command, env, user,
// working dir and hostname by what a spec may carry, every size bounded.
// Throws Error(InvalidInput) "config.dump: `<field>` …: <the rule>".
void checkUntrustedConfig(const ContainerConfig& config);

// A container's user: empty (the image's) or numeric "uid[:gid]", each an id
// of its user namespace when it has one. Throws Error(InvalidInput) "<what> …".
void checkContainerUser(const std::string& user, const std::optional<IdMapping>& mapping, const std::string& what);

enum class ContainerStatus { Created, Running, Stopped, Checkpointed };
std::string statusName(ContainerStatus status);
ContainerStatus statusFromName(const std::string& name);

struct ContainerState {
  ContainerStatus status = ContainerStatus::Created;
  int pid = 0;                // init process, host pid namespace
  std::string netns;          // path of the persistent netns, when network is on
  std::string ip, mac;        // from the CNI result
  nlohmann::json networkStatus = nlohmann::json::array();  // CNI results (network.status)
  std::string startedAt;
  std::optional<int> exitCode;
  std::string checkpointedAt;
  bool checkpointTcpEstablished = false;
  std::string migrationId;  // set on a target while a migration brings it here; cleared on commit  // the checkpoint holds TCP connections: restore must too

  nlohmann::json toJson() const;
  static ContainerState fromJson(const nlohmann::json& j);
};

// Where a container's files live; all derived from its directory.
struct ContainerPaths {
  fs::path dir;
  fs::path bundle() const { return dir / "bundle"; }        // runc bundle: config.json
  fs::path spec() const { return bundle() / "config.json"; }
  fs::path rootfs() const { return dir / "rootfs"; }        // overlay merged
  fs::path upper() const { return dir / "upper"; }
  fs::path work() const { return dir / "work"; }
  fs::path userdata() const { return dir / "userdata"; }    // generated /etc files
  fs::path mappedLower() const { return dir / "lower"; }    // the image rootfs, idmapped (user namespace only)
  fs::path networkAttachment() const { return dir / "network-attachment.json"; }  // the network hook's CNI result
  fs::path log() const { return dir / "ctr.log"; }
  fs::path pidFile() const { return dir / "pidfile"; }
  fs::path conmonPidFile() const { return dir / "conmon.pid"; }
  fs::path exitDir() const { return dir / "exits"; }
  fs::path socketDir() const { return dir / "sock"; }
  fs::path runcLog() const { return dir / "runc.log"; }
  fs::path checkpoint() const { return dir / "checkpoint"; }  // CRIU images
  fs::path criuWork() const { return dir / "criu-work"; }     // dump.log, restore.log, stats
  fs::path record() const { return dir / "container.json"; }
};

struct Container {
  ContainerConfig config;
  ContainerState state;
  ContainerPaths paths;

  nlohmann::json toJson() const;  // inspect output
};

std::string newContainerId();

}  // namespace migrate
