// A container's network on this host: the persistent netns the agent makes
// and attaches with CNI, or the attachment the network hook made for a
// container in a user namespace (agent/network-hook.h). Its state lives in
// the container's record (ContainerState::netns, networkStatus, ip, mac).
#pragma once

#include <filesystem>
#include <optional>
#include <string>

#include "agent/container.h"
#include "net/cni.h"
#include "net/netns-lock.h"

namespace migrate {

namespace fs = std::filesystem;

class ContainerNetwork {
 public:
  // `cniConfig`: the CNI conflist; without it containers get loopback only.
  ContainerNetwork(fs::path stateDir, std::optional<fs::path> cniConfig);

  // Whether the network hook attaches `container` (one in a user namespace,
  // with network) rather than the agent.
  bool attachesFromHook(const Container& container) const;
  // Takes what the network hook attached (network-attachment.json) into the
  // container's state; no-op when the hook did not run or failed.
  void adoptAttachment(Container& container);
  // The same after a create or restore whose hook must have run: throws if it did not.
  void requireAttachment(Container& container);

  // A persistent netns for the container, attached to the host's CNI network
  // with the requested address and MAC when given (libpod's requestedIP).
  // `lock`, when given, gets the netns lock (net/netns-lock.h) taken before
  // the address appears, for the caller to lift once the restore has
  // re-created the sockets (DESIGN.md: a client's retransmission meeting the
  // address without its socket gets a RST).
  void setup(Container& container, std::optional<std::string> ip, std::optional<std::string> mac,
             std::optional<NetnsLockGuard>* lock);
  // CNI DEL (failures logged) and the netns removed.
  void teardown(Container& container);
  // Post-copy source: CNI DEL while the frozen processes keep their netns,
  // and CNI ADD into that same netns (same IP and MAC) if they resume here.
  void releaseAddress(Container& container);
  void reattachAddress(Container& container);

 private:
  fs::path stateDir_;
  std::optional<fs::path> cniConfig_;
  CniClient cni_;
};

}  // namespace migrate
