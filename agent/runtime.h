// Drives the OCI runtime (runc) through conmon, so that a container's stdio
// are pipes held by a monitor (CRIU cannot dump an fd on a file outside the
// container's mounts) and containers outlive the agent.
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <optional>
#include <string>

#include "agent/container.h"

namespace migrate {

struct RuntimeOptions {
  fs::path runcRoot;              // per-agent: runc's state for this host's containers
  std::string runc = "/usr/sbin/runc";
  std::string conmon = "/usr/bin/conmon";
};

struct CheckpointOptions {
  bool tcpEstablished = false;
  bool leaveRunning = false;
};

struct RestoreOptions {
  bool tcpEstablished = false;
};

// runc's view of a container ("runc state"); nullopt when runc has none.
struct RuntimeState {
  std::string status;  // created, running, paused, stopped
  pid_t pid = 0;
};

class Runtime {
 public:
  explicit Runtime(RuntimeOptions options);

  // runc create under conmon; returns the init pid. The container is created,
  // not started (start() runs the user process).
  pid_t create(const std::string& id, const ContainerPaths& paths);
  void start(const std::string& id);
  std::optional<RuntimeState> stateIfExists(const std::string& id);
  void kill(const std::string& id, int signal);
  // runc delete --force; no-op when runc does not know the container.
  void remove(const std::string& id);

  // runc checkpoint (CRIU dump) into paths.checkpoint(); CRIU's dump.log is
  // kept in paths.criuWork() and quoted in errors.
  void checkpoint(const std::string& id, const ContainerPaths& paths, const CheckpointOptions& options);
  // runc restore under conmon (CRIU restore) from paths.checkpoint(); returns the init pid.
  pid_t restore(const std::string& id, const ContainerPaths& paths, const RestoreOptions& options);

  std::string runcVersion();
  static std::string criuVersion();

 private:
  pid_t runConmon(const std::string& id, const ContainerPaths& paths, const std::optional<RestoreOptions>& restore);
  std::string runcCommand(const std::vector<std::string>& args);

  RuntimeOptions options_;
};

// The last `lines` lines of a log file, for error messages.
std::string logTail(const fs::path& file, size_t lines = 12);

}  // namespace migrate
