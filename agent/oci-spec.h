// The OCI runtime spec for a container, generated the way libpod's
// generateSpec() does it: namespaces, hostname, bind mounts of the generated
// /etc files, /dev/shm, env, user, rlimits within our own hard limits,
// cgroups path and SELinux labels where the host enforces SELinux.
#pragma once

#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "agent/container.h"

namespace migrate {

struct SpecInputs {
  fs::path rootfs;                         // overlay merged dir
  std::map<std::string, fs::path> bindMounts;  // container path -> host file (from makeBindMounts)
  std::optional<fs::path> netns;           // persistent netns; none = a fresh one (loopback only, or networkHook's)
  // A container in a user namespace (config.idMapping) gets a fresh netns
  // that runc makes inside it (a netns made before would belong to the
  // host's user namespace: the container could not mount sysfs, nor CRIU
  // restore into it). This prestart hook, run by runc once the namespaces
  // exist (at create, and at restore before CRIU restores the sockets),
  // attaches it to the CNI network (agent/network-hook.h). Empty: none.
  std::vector<std::string> networkHook;
  std::string cgroupsPath;                 // "/migrate/<host>/<id>"
  std::optional<fs::path> criuConfig;      // runc's org.criu.config annotation
  std::vector<std::string> imageEnv;       // image defaults, overridden by the container's env
  std::string imageWorkingDir;
  std::string imageUser;
};

nlohmann::json generateSpec(const ContainerConfig& config, const SpecInputs& inputs);

// Rlimits as runc needs them here: without CAP_SYS_RESOURCE a spec limit above
// our own hard limit makes runc fail, so each is clamped to it.
nlohmann::json clampedRlimits();

// SELinux process and mount labels for a new container (libselinux's
// lxc_contexts with a random MCS pair); nullopt where SELinux is off.
struct SelinuxLabels {
  std::string process, mount;
};
std::optional<SelinuxLabels> containerSelinuxLabels();

// Writes /etc/hosts, /etc/resolv.conf, /etc/hostname and /run/.containerenv
// for the container into `userdata` and returns container path -> host file
// (libpod's makeBindMounts). `ip` may be empty (loopback only).
std::map<std::string, fs::path> makeBindMounts(const ContainerConfig& config, const fs::path& userdata,
                                               const std::string& ip);

// What a spec a container was checkpointed with (a bundle's spec.dump, from
// another host and untrusted) has that `generated`, this host's own spec for
// it, does not: one line per JSON-patch operation that would turn one into
// the other, after the host-specific paths (root, container directory,
// netns, cgroups path, CRIU config, SELinux labels) are mapped to this host's.
// Only for showing; `checkpointed` may be any JSON.
std::vector<std::string> specDifferences(const nlohmann::json& checkpointed, const nlohmann::json& generated,
                                         const SpecInputs& inputs);

}  // namespace migrate
