// The network of a container in a user namespace, attached from runc's
// prestart hook. Its netns must belong to its user namespace (else sysfs
// cannot be mounted in it, and CRIU, which restores the tasks into a user
// namespace it makes, cannot enter it), so runc makes both, at create and at
// restore, and only then can the netns be attached: runc runs the hook once
// the namespaces exist, before the container's program (create) or before
// CRIU restores the sockets (restore, CRIU's setup-namespaces). The hook is
// this agent's own binary (`migrate-agent network-hook`), never a bundle's.
//
// It pins the netns at <state>/netns/<id> (so the agent can lock, announce
// and detach it as it does a netns it made itself), locks it if told to
// (net/netns-lock.h: before the address appears), runs CNI ADD with the
// requested address and MAC, and leaves the result in the container's
// network-attachment.json for the agent to adopt.
#pragma once

#include <filesystem>
#include <istream>
#include <optional>
#include <string>
#include <vector>

#include "net/cni.h"

namespace migrate {

namespace fs = std::filesystem;

struct NetworkHookRequest {
  std::string containerId;
  std::optional<std::string> ip, mac;  // requested (a restore keeps its own); none: IPAM chooses
  bool lock = false;                   // lock the netns before CNI ADD; the agent unlocks after the restore
};

// The CNI client every part of an agent uses: plugins from /usr/lib/cni,
// results cached in <state>/cni-cache.
CniClient agentCniClient(const fs::path& stateDir);

// Where a container's netns is bound: the one the agent makes (--userns
// host), or the one the hook pins.
fs::path containerNetnsPath(const fs::path& stateDir, const std::string& containerId);

// The hook's command line for the spec: this very binary with the agent's
// state dir and CNI config, then the request.
std::vector<std::string> networkHookCommand(const fs::path& stateDir, const fs::path& cniConfig,
                                            const NetworkHookRequest& request);

// Runs in the hook process: `ociState` is the OCI state runc writes on its
// stdin (its `pid` names the process whose netns to attach). Writes
// `attachmentFile` (the CNI result as network.status) last; on failure
// nothing is left (no pin, no lock, no address) and it throws.
void runNetworkHook(const fs::path& stateDir, const fs::path& cniConfig, const NetworkHookRequest& request,
                    std::istream& ociState, const fs::path& attachmentFile);

}  // namespace migrate
