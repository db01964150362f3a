// What an agent and its post-copy page relay (page-relay.h) tell each other,
// as files in the relay's directory, so that a restarted agent finds and
// adopts a relay that outlived its predecessor:
//
//   spec.json    the agent's orders, written once before the relay starts (0600: the key)
//   status.json  the relay's state, replaced atomically on every change
//   key          a fresh one-time key (resumePostCopy), then SIGUSR1
//   restored     target: the restore returned, the container runs
//   relay.log    its messages
//
// Signals: SIGUSR1 re-reads `key` (the source reconnects at once); SIGTERM
// ends the relay — the source's first makes CRIU fail, so that it resumes
// the container it froze (giving it back); the target's stops lazy-pages.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace migrate {

enum class RelayRole { Source, Target };

struct PageRelaySpec {
  RelayRole role = RelayRole::Source;
  std::string migrationId;
  std::string containerName;
  std::vector<uint8_t> psk;
  // Source: where the target's relay listens, and CRIU's page server here.
  std::string targetAddress;
  uint16_t targetPort = 0;
  uint16_t criuPort = 0;
  pid_t runcPid = 0;  // the `runc checkpoint --lazy-pages` serving the pages
  // Target: the receiver's listening socket arrives as fd 3 (bound here).
  std::string listenAddress;
  // `criu lazy-pages`, with "@PORT@" for the loopback port it fetches from.
  std::vector<std::string> lazyPagesArgs;
  std::string lazyPagesSocket;  // exists once lazy-pages is ready for restore
  std::string imagesDir;        // the checkpoint's images: which pages the source holds
  std::string cgroup;           // the container's cgroupsPath, frozen if its pages cannot come
  std::string relayCgroup;      // the relay's own, joined at its start (container-cgroup.h)
};

enum class RelayState { Starting, Flowing, Cut, Done, Failed };
std::string relayStateName(RelayState state);

struct PageRelayStatus {
  RelayState state = RelayState::Starting;
  std::string error;
  uint64_t bytesPages = 0;
  uint32_t outstanding = 0;      // target: requests not fully answered
  uint32_t reconnects = 0;       // connections to the peer after the first
  int64_t cutSinceMs = 0;        // wall clock, 0 unless cut
  bool containerFrozen = false;  // target
  bool lazyPagesReady = false;   // target: restore may start
  uint32_t uffdsHeld = 0;        // target: lazy-pages' userfaultfds the relay holds a copy of
  int localFd = -1;              // the relay's fd of CRIU's socket (source) or lazy-pages' (target)
  pid_t pid = 0;                 // the relay
  pid_t lazyPagesPid = 0;        // target
};

// <stateDir>/relays/<migrationId>
std::filesystem::path relayDirectory(const std::filesystem::path& stateDir, const std::string& migrationId);

void writeRelaySpec(const std::filesystem::path& dir, const PageRelaySpec& spec);
PageRelaySpec readRelaySpec(const std::filesystem::path& dir);
void writeRelayStatus(const std::filesystem::path& dir, const PageRelayStatus& status);
// nullopt while the relay has not written one yet.
std::optional<PageRelayStatus> readRelayStatus(const std::filesystem::path& dir);
void writeRelayKey(const std::filesystem::path& dir, const std::vector<uint8_t>& psk);
std::optional<std::vector<uint8_t>> readRelayKey(const std::filesystem::path& dir);

}  // namespace migrate
