// The node side as one object: images, containers, checkpoint, export,
// import and restore on this host. The CLI's local verbs and the daemon's
// request handlers both call these methods; each reads as the steps of
// libpod's flow it generalises.
#pragma once

#include <chrono>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "agent/bundle-reader.h"
#include "agent/bundle-signature.h"
#include "agent/container.h"
#include "agent/container-network.h"
#include "agent/image-store.h"
#include "agent/network-hook.h"
#include "agent/page-relay-files.h"
#include "agent/runtime.h"
#include "agent/trash.h"
#include "common/stream.h"

namespace migrate {

struct AgentOptions {
  fs::path stateDir;                   // everything this agent owns lives here
  std::string hostName = "local";      // names the host in bundles and cgroup paths
  std::optional<fs::path> cniConfig;   // CNI conflist; containers run with network only when set
  RuntimeOptions runtime;              // runcRoot defaults to stateDir/runc
  bool checkpointsInMemory = true;     // CRIU images on a tmpfs per container (storage.h)
  BundleLimits importLimits;           // this host's caps on any bundle, whatever its manifest declares
  // Host ids this agent maps containers' user namespaces to (--userns-range).
  IdRange idRange;
  // Signs every bundle this agent exports; made by main() from
  // <stateDir>/signing.key (agent/bundle-signature.h). Export refuses without.
  std::shared_ptr<const SigningKey> signingKey;
};

struct RunRequest {
  std::string name;
  std::string image;                   // name, digest or prefix
  std::vector<std::string> args;       // empty: the image's entrypoint + cmd
  std::vector<std::string> env;
  std::string workingDir, user, hostname;
  bool network = true;                 // has effect only when the agent has a CNI config
  // false: a user namespace with a mapping allocated from the agent's range
  // (the default); true: the host's (--userns=host; root in the container is
  // root on the host).
  bool hostUserns = false;
};

struct CheckpointRequest {
  bool tcpEstablished = false;
  bool leaveRunning = false;
};

struct ExportOptions {
  int zstdLevel = 3;
  int zstdThreads = 2;
  std::function<void(uint64_t bytesIn)> onProgress;
};

struct ExportStats {
  uint64_t bytesRaw = 0;         // tar bytes before compression
  uint64_t bytesCompressed = 0;  // what went to the output
  // SHA-256 of the tar, as signed in its signature.json: what the target's
  // reader computes too, and acknowledges (TLS already authenticates the
  // compressed bytes on the wire, so they are not hashed a second time).
  std::string tarSha256;
};

struct CheckpointSize {
  uint64_t memoryBytes = 0;
  uint64_t rootfsDiffBytes = 0;
  uint64_t rootfsDiffEntries = 0;
  std::string postCopyRefusal;  // empty: this host can serve it post-copy
};

struct ImportRequest {
  std::optional<std::string> name;  // a new name: also a new id and no static IP (as libpod)
  std::string migrationId;          // the migration bringing it here, so an abort finds it again
  // Whose signature makes the bundle acceptable; the default trusts nobody,
  // so an import that names no signer is refused.
  BundleTrust trust;
};

struct RestoreRequest {
  bool tcpEstablished = false;
  bool ignoreStaticIp = false;
  bool ignoreStaticMac = false;
  bool keepCheckpoint = false;
  // Post-copy: memory from the lazy-pages daemon (startLazyPages first).
  bool lazyPages = false;
};

// How long each step took, for migration stats and the benchmarks.
struct PhaseTimes {
  std::vector<std::pair<std::string, double>> seconds;
  void add(std::string phase, double s) { seconds.emplace_back(std::move(phase), s); }
};

inline double secondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

class Agent {
 public:
  explicit Agent(AgentOptions options);

  const AgentOptions& options() const { return options_; }
  ImageStore& images() { return images_; }
  Runtime& runtime() { return runtime_; }

  // Removes what an import killed midway left (its staging directory and
  // the tmpfs in it). A running import holds a lock on its staging
  // directory, so this is safe at any time: every Agent calls it when made
  // (each CLI command, the daemon's start) and the daemon on an abort.
  void removeStaleImports();

  Container run(const RunRequest& request);
  std::vector<Container> list();
  // The list, or nullopt when another operation holds the agent (a long
  // export or import): heartbeats must not wait for a migration.
  std::optional<std::vector<Container>> listIfIdle();
  Container inspect(const std::string& ref);
  std::optional<Container> findIfExists(const std::string& ref);
  std::string logs(const std::string& ref, size_t tailLines = 0);
  void stop(const std::string& ref, int timeoutSeconds = 10);
  void remove(const std::string& ref, bool force);

  // runc checkpoint, then network.status, config.dump and spec.dump beside it.
  Container checkpoint(const std::string& ref, const CheckpointRequest& request, PhaseTimes* times = nullptr);
  // Post-copy, source side: a lazy runc checkpoint whose page server listens
  // on 127.0.0.1:port; returns once every image but the pages is written
  // (network.status, config.dump and spec.dump too). The container stays
  // frozen, still `running` in our records, until finishLazyCheckpoint().
  LazyDump startLazyCheckpoint(const std::string& ref, const CheckpointRequest& request, uint16_t port,
                               PhaseTimes* times = nullptr);
  // Waits for the page transfer. Success: the container is gone from this
  // host, `checkpointed`. Failure: CRIU resumed it; its network is unlocked
  // here and the error rethrown, the container `running` again.
  Container finishLazyCheckpoint(const std::string& ref, LazyDump& dump);
  // Gives the frozen container back on this host: first undoes what CRIU's
  // failure path would leave (its network lock, TCP repair mode) and takes
  // the address back, while the processes are still stopped, then makes the
  // page server fail so that CRIU resumes them. `pageServer`: our connection
  // to it, if any. Returns the container, `running`.
  // finishLazyCheckpoint for a dump an earlier run of this agent started
  // (its `runc checkpoint` is not our child).
  void finishAdoptedLazyCheckpoint(const std::string& ref, pid_t runcPid);
  // abortLazyCheckpoint for such a dump: `failCriu` makes its page server
  // fail (the relay does it), then CRIU resumes the container.
  Container giveBackAdoptedLazyCheckpoint(const std::string& ref, pid_t runcPid, const std::function<void()>& failCriu);
  // `failCriu`, if given, makes the page server fail instead (the page
  // relay holds its one connection).
  Container abortLazyCheckpoint(const std::string& ref, LazyDump& dump, Fd pageServer,
                                const std::function<void()>& failCriu = {});
  // Memory its processes hold (anonymous + shared, resident): how much a
  // post-copy has to move.
  uint64_t residentBytes(const std::string& ref);
  // What a checkpoint of running `ref` would move now: its resident memory
  // and its writable layer as a bundle carries it (a downtime budget's
  // estimate, coordinator/downtime-estimate.h).
  CheckpointSize measureCheckpoint(const std::string& ref);
  // Post-copy, target side: what the page relay needs to run the lazy-pages
  // daemon for restoring `ref` with lazyPages (its command, socket, and the
  // cgroup it freezes if the pages cannot come).
  PageRelaySpec lazyPagesRelaySpec(const std::string& ref);
  // The cgroup a migration's page relay lives in (`/migrate-relays/HOST/ID`).
  std::string relayCgroupPath(const std::string& migrationId) const;
  // Deletes the checkpoint a restore kept (keepCheckpoint, or post-copy
  // until the last page arrived).
  void releaseCheckpoint(const std::string& ref);
  // Streams the checkpointed container as a bundle (tar -> zstd) into `out`.
  ExportStats exportCheckpoint(const std::string& ref, OutputStream& out, const ExportOptions& options = {});
  // Reads a bundle stream (zstd-compressed) into a new container in status
  // Checkpointed. `onManifest` may refuse the bundle early by throwing.
  // At the manifest, before anything else is written: the name is reserved
  // (a concurrent import of it, here or in another process, gets Conflict
  // "name ... is in use"), the declared sizes are prechecked against free
  // memory and disk (agent/capacity.h), and the checkpoint tmpfs is mounted
  // with their size. The bundle then gets no more than it declared.
  Container importCheckpoint(InputStream& in, const ImportRequest& request,
                             std::function<void(const nlohmann::json& manifest)> onManifest = {},
                             std::string* sha256 = nullptr);
  // Conflict "user namespace mapping … of `name` overlaps `other`'s" when
  // `mapping` cannot be given to a container here: outside this agent's
  // range, or overlapping a container's (any state). A target calls it
  // before anything of a migration is made, and again at import.
  void checkIdMappingAvailable(const IdMapping& mapping, const std::string& name);
  // Storage, network with the requested IP and MAC, bind mounts, runc restore.
  Container restore(const std::string& ref, const RestoreRequest& request, PhaseTimes* times = nullptr);

 private:
  Container load(const fs::path& dir);
  void save(const Container& container);
  Container refresh(Container container);
  ContainerPaths pathsFor(const std::string& id) const;
  std::string cgroupsPath(const std::string& id) const;
  fs::path criuConfig() const;
  void prepareStorage(const Container& container);
  // `hook`: how the network hook attaches a container in a user namespace
  // (agent/network-hook.h); ignored for one in the host's.
  void writeSpec(Container& container, const std::optional<nlohmann::json>& checkpointedSpec,
                 const NetworkHookRequest& hook);
  std::vector<IdMapping> mappingsInUse();
  void cleanupAfterStop(Container& container);
  void prepareCheckpointDirectory(const fs::path& dir);
  void releaseCheckpointFiles(const Container& container);
  void recordCheckpoint(Container& container, const CheckpointRequest& request);
  void markCheckpointed(Container& container);
  // Post-copy given back: address and CRIU network lock, under mutex_.
  void reclaimNetworkWhileFrozen(Container& c);
  void pruneCgroupParents();

  AgentOptions options_;
  ImageStore images_;
  Runtime runtime_;
  ContainerNetwork network_;
  Trash trash_;  // removed containers' directories, deleted off the lock
  // One operation at a time on this host's containers, except the streams:
  // an export or import holds it only to look up and to commit, so that
  // migrations in both directions cannot wait on each other across hosts
  // (host1 exporting A to host2 while host2's lock waits for B's import
  // from host1 would hold both until a stream timed out).
  std::recursive_timed_mutex mutex_;
  std::set<std::string> exporting_;  // ids being streamed out (mutex_): not removed or restored meanwhile
  // Imports in progress by name, from their manifest to their commit: their
  // user namespace mappings count as taken (mutex_).
  std::map<std::string, IdMapping> importingMappings_;
  void refuseIfExporting(const Container& container);  // with mutex_ held
};

}  // namespace migrate
