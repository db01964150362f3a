#include "agent/network-hook.h"

#include <unistd.h>

#include <iterator>
#include <optional>

#include "agent/identifiers.h"
#include "common/error.h"
#include "common/files.h"
#include "common/untrusted-json.h"
#include "net/netns-lock.h"
#include "net/netns.h"
#include "net/network-status.h"

namespace migrate {

CniClient agentCniClient(const fs::path& stateDir) { return CniClient({"/usr/lib/cni"}, stateDir / "cni-cache"); }

fs::path containerNetnsPath(const fs::path& stateDir, const std::string& containerId) {
  return stateDir / "netns" / containerId;
}

std::vector<std::string> networkHookCommand(const fs::path& stateDir, const fs::path& cniConfig,
                                            const NetworkHookRequest& request) {
  std::vector<std::string> args = {fs::read_symlink("/proc/self/exe").string(), "--state", stateDir.string(),
                                   "--cni-config", cniConfig.string(), "network-hook", request.containerId};
  if (request.ip) args.insert(args.end(), {"--ip", *request.ip});
  if (request.mac) args.insert(args.end(), {"--mac", *request.mac});
  if (request.lock) args.push_back("--lock");
  return args;
}

void runNetworkHook(const fs::path& stateDir, const fs::path& cniConfig, const NetworkHookRequest& request,
                    std::istream& ociState, const fs::path& attachmentFile) {
  ErrorContext context("network hook of " + request.containerId);
  checkContainerId(request.containerId, "container id");
  std::string text((std::istreambuf_iterator<char>(ociState)), std::istreambuf_iterator<char>());
  auto state = parseUntrustedJson(text, "OCI state");
  if (!state.contains("pid") || !state["pid"].is_number_integer() || state["pid"].get<long>() <= 0) {
    fail(ErrorKind::InvalidInput, "the OCI state on stdin has no pid");
  }
  std::string source = "/proc/" + std::to_string(state["pid"].get<long>()) + "/ns/net";
  fs::path netns = containerNetnsPath(stateDir, request.containerId);
  fs::create_directories(netns.parent_path());
  if (netnsExists(netns) || fs::exists(netns)) removeNetns(netns);  // a previous life's
  fs::remove(attachmentFile);
  pinNetns(source, netns);
  // Handed over to the agent, which adopts it (NetnsLockGuard::adopt) and
  // lifts it once runc restore re-created the sockets.
  std::optional<NetnsLockGuard> lock;
  try {
    if (request.lock) lock.emplace(netns);
    auto network = CniNetwork::load(cniConfig);
    CniAttachment attachment{request.containerId, netns, "eth0", request.ip, request.mac};
    auto cni = agentCniClient(stateDir);
    auto result = cni.add(network, attachment);
    try {
      writeFileAtomic(attachmentFile, serializeNetworkStatus({result}));
    } catch (...) {
      cni.del(network, attachment, result);  // the address goes back to IPAM
      throw;
    }
    if (lock) lock->release();
  } catch (...) {
    if (lock) lock->release();
    removeNetns(netns);  // the lock and the half-made interface go with it
    throw;
  }
}

}  // namespace migrate
