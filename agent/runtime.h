// Drives the OCI runtime (runc) through conmon, so that a container's stdio
// are pipes held by a monitor (CRIU cannot dump an fd on a file outside the
// container's mounts) and containers outlive the agent.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <optional>
#include <string>

#include "agent/container.h"
#include "common/fd.h"
#include "common/subprocess.h"

namespace migrate {

struct RuntimeOptions {
  fs::path runcRoot;              // per-agent: runc's state for this host's containers
  std::string runc = "/usr/sbin/runc";
  std::string conmon = "/usr/bin/conmon";
  // A restore that has not finished by then is killed (CRIU, runc, conmon and
  // whatever CRIU made in the container's cgroup) and reported: a hostile or
  // broken image can make CRIU's restorer loop for ever. 0: 30 s + 10 s per
  // GiB of images (restoreDeadline). migrate-agent --restore-timeout.
  std::chrono::seconds restoreTimeout{0};
  // CRIU's restore.log growing past this ends the restore the same way (the
  // log level comes from runc, -v4, which CRIU's config file cannot lower);
  // the log is then cut to its last kLogTailBytes. --criu-log-max-bytes.
  uint64_t criuLogMaxBytes = 64ull << 20;
};

struct CheckpointOptions {
  bool tcpEstablished = false;
  bool leaveRunning = false;
};

struct RestoreOptions {
  bool tcpEstablished = false;
  // Post-copy: memory comes from the lazy-pages daemon listening in
  // paths.criuWork() (startLazyPages), not from the images.
  bool lazyPages = false;
  // The container's cgroup (the spec's linux.cgroupsPath, as the agent made
  // it): runc puts CRIU there, so a restore past its deadline is killed there.
  std::string cgroupsPath;
};

// Post-copy, source side: a `runc checkpoint --lazy-pages` that has written
// every image but the memory pages and now serves those from its page server
// until one lazy-pages daemon has fetched them all. The container stays
// frozen meanwhile; runc exits when the last page went (the container is
// then gone) or when the transfer failed (CRIU then resumes it).
struct LazyDump {
  Subprocess runc;
  uint16_t pageServerPort = 0;  // on 127.0.0.1
  bool networkReleased = false;  // CRIU's lock undone, address back (abortLazyCheckpoint)
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
  // Starts the lazy dump and returns once its page server listens on
  // 127.0.0.1:port (runc's --status-fd), or throws with CRIU's dump.log.
  LazyDump startLazyCheckpoint(const std::string& id, const ContainerPaths& paths, const CheckpointOptions& options,
                               uint16_t port);
  // Makes the page server fail, so that CRIU resumes the frozen container:
  // an unknown command, then a TCP reset, on `connection` (or a new one).
  // A plain close would not do: the page server takes EOF for "all pages
  // fetched" and kills the container.
  void abortLazyCheckpoint(LazyDump& dump, Fd connection);
  // Waits for the lazy dump to end; throws with CRIU's dump.log if the page
  // transfer failed.
  void finishLazyCheckpoint(const std::string& id, const ContainerPaths& paths, LazyDump& dump);
  // Post-copy, target side: `criu lazy-pages` fetching pages from
  // 127.0.0.1 for a restore from paths.checkpoint(); it exits after the last
  // page. The page relay runs it (page-relay.h), "@PORT@" replaced by the port it
  // listens on; the daemon is ready for restore once lazyPagesSocket exists.
  std::vector<std::string> lazyPagesCommand(const ContainerPaths& paths);
  static std::filesystem::path lazyPagesSocket(const ContainerPaths& paths);
  // runc restore under conmon (CRIU restore) from paths.checkpoint(); returns the init pid.
  pid_t restore(const std::string& id, const ContainerPaths& paths, const RestoreOptions& options);

  std::string runcVersion();
  static std::string criuVersion();

 private:
  pid_t runConmon(const std::string& id, const ContainerPaths& paths, const std::optional<RestoreOptions>& restore);
  // conmon's one-line JSON reply on `syncFd`; for a restore, within its
  // deadline and log cap, else the restore is killed and this throws.
  std::string awaitConmonReply(int syncFd, const std::string& id, const ContainerPaths& paths,
                               const std::optional<RestoreOptions>& restore, pid_t conmonGroup);
  void killRestore(const std::string& id, const ContainerPaths& paths, const RestoreOptions& restore, pid_t conmonGroup);
  std::string runcCommand(const std::vector<std::string>& args);

  RuntimeOptions options_;
};

// Post-copy needs CRIU's page-server pipe of 4 MiB: without CAP_SYS_RESOURCE
// that is only allowed when fs.pipe-max-size >= 4 MiB. Throws naming the fix.
void checkLazyPagesSupported();
// The target's side: the restored tasks of a container in a user namespace
// open their userfaultfd from inside it, which Linux allows only with
// vm.unprivileged_userfaultfd=1 (CRIU 4.2 does not ask for
// UFFD_USER_MODE_ONLY, nor use /dev/userfaultfd). Throws naming the fix.
void checkLazyRestoreSupported();

// The last `lines` lines of a log file, for error messages, read from at
// most its last kLogTailBytes: CRIU and runc logs can be huge.
constexpr size_t kLogTailBytes = 64 << 10;
std::string logTail(const fs::path& file, size_t lines = 12);

// The default restore deadline for `imageBytes` of CRIU images.
std::chrono::seconds restoreDeadline(uint64_t imageBytes);

}  // namespace migrate
