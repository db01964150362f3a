// Agent, bundle I/O: a checkpoint exported as a bundle stream, a bundle
// stream imported as a checkpointed container, and what a killed import left.
#include "agent/agent.h"

#include "agent/bundle-reader.h"
#include "agent/bundle-writer.h"
#include "agent/bundle.h"
#include "agent/capacity.h"
#include "agent/container-processes.h"
#include "agent/identifiers.h"
#include "agent/import-lock.h"
#include "agent/mount-guard.h"
#include "agent/storage.h"
#include "common/error.h"
#include "common/files.h"
#include "common/log.h"
#include "common/timestamp.h"
#include "common/untrusted-json.h"
#include "common/zstd-stream.h"
#include "net/network-status.h"

namespace migrate {

using nlohmann::json;

ExportStats Agent::exportCheckpoint(const std::string& ref, OutputStream& out, const ExportOptions& options) {
  Container c;
  {
    std::lock_guard lock(mutex_);
    c = inspect(ref);
    if (!fs::exists(c.paths.checkpoint() / "inventory.img")) {
      fail(ErrorKind::Conflict, "export of `" + c.config.name +
                                    "`: no checkpoint to export (checkpoint the container first)");
    }
    refuseIfExporting(c);
    exporting_.insert(c.config.id);
  }
  // Streamed without the lock (see mutex_); its files stay put meanwhile.
  struct Exporting {
    Agent& agent;
    std::string id;
    ~Exporting() {
      std::lock_guard lock(agent.mutex_);
      agent.exporting_.erase(id);
    }
  } exporting{*this, c.config.id};
  ErrorContext context("export of `" + c.config.name + "`");
  BundleSources sources;
  auto& m = sources.manifest;
  m.formatVersion = kBundleFormatVersion;
  m.containerName = c.config.name;
  m.containerId = c.config.id;
  m.imageDigest = c.config.imageDigest;
  m.imageName = c.config.imageName;
  m.sourceHost = options_.hostName;
  m.criuVersion = Runtime::criuVersion();
  m.runtimeVersion = runtime_.runcVersion();
  m.createdAt = nowUtc();
  m.checkpointBytes = treeSize(c.paths.checkpoint());
  m.rootfsDiffBytes = treeSize(c.paths.upper());
  m.tcpEstablished = c.state.checkpointTcpEstablished;
  m.idMapping = c.config.idMapping;
  sources.configDump = c.paths.dir / "config.dump";
  sources.specDump = c.paths.dir / "spec.dump";
  sources.networkStatus = c.paths.dir / "network.status";
  sources.checkpointDir = c.paths.checkpoint();
  sources.upperDir = c.paths.upper();
  if (!options_.signingKey) fail("this agent has no signing key to sign the bundle with");
  sources.signer = options_.signingKey.get();
  if (fs::exists(c.paths.log())) sources.ctrLog = c.paths.log();
  if (fs::exists(c.paths.criuWork() / "stats-dump")) sources.statsDump = c.paths.criuWork() / "stats-dump";

  CountingOutputStream counted(out);
  ZstdOutputStream zstd(counted, options.zstdLevel, options.zstdThreads);
  CountingOutputStream raw(zstd);
  std::string digest = writeBundle(sources, raw, options.onProgress);
  zstd.finish();
  return ExportStats{raw.count(), counted.count(), digest};
}

CheckpointSize Agent::measureCheckpoint(const std::string& ref) {
  auto c = inspect(ref);
  if (c.state.status != ContainerStatus::Running) {
    fail(ErrorKind::Conflict, "`" + c.config.name + "` is " + statusName(c.state.status) + ", not running");
  }
  CheckpointSize size;
  size.memoryBytes = migrate::residentBytes(c.state.pid);
  try {
    checkLazyPagesSupported();
  } catch (const std::exception& e) {
    size.postCopyRefusal = e.what();
  }
  // The container runs: a file it deletes mid-walk fails the walk; the
  // walk is then tried again, and an estimate without it is still one.
  for (int attempt = 0; attempt < 3; ++attempt) {
    try {
      auto diff = rootfsDiffSize(c.paths.upper());
      size.rootfsDiffBytes = diff.bytes;
      size.rootfsDiffEntries = diff.entries;
      break;
    } catch (const std::exception& e) {
      logDebug("measure `" + c.config.name + "`: " + e.what());
    }
  }
  return size;
}

Container Agent::importCheckpoint(InputStream& in, const ImportRequest& request,
                                  std::function<void(const json& manifest)> onManifest, std::string* sha256) {
  // Streamed without the lock (see mutex_) into a staging dir nobody else
  // sees; the name is reserved across processes (NameReservation), and what
  // is checked against other containers is checked again at the commit.
  ErrorContext context("import");
  if (request.name) checkContainerName(*request.name, "name");
  // Unpack into a directory beside the containers' that no listing sees
  // (no container.json yet) and that disappears if anything fails; locked
  // while we live, so removeStaleImports() knows it is not stale.
  // Made and locked in one step under the agent's lock, which
  // removeStaleImports() holds: it never finds this one unlocked.
  std::unique_lock stagingLock(mutex_);
  TempDir staging(options_.stateDir / "containers", kImportPrefix);
  auto alive = ImportLock::tryAcquire(staging.path());
  if (!alive) fail(ErrorKind::Conflict, "staging directory " + staging.path().string() + " is locked");
  stagingLock.unlock();
  // From the manifest to the commit, its mapping is taken for everyone else.
  struct MappingReservation {
    Agent& agent;
    std::optional<std::string> name;
    ~MappingReservation() {
      if (!name) return;
      std::lock_guard lock(agent.mutex_);
      agent.importingMappings_.erase(*name);
    }
  } mappingReservation{*this, std::nullopt};
  // The CRIU images land on a tmpfs sized from the manifest, mounted once
  // that is read; unmounted before the staging dir goes if we fail.
  MountGuard checkpointMount;
  std::optional<NameReservation> reservation;
  ZstdInputStream zstd(in);
  ReadSignature signature;
  auto manifest = readBundle(zstd, staging.path(), options_.importLimits, [&](const BundleManifest& m) {
    if (onManifest) onManifest(m.toJson());
    reservation.emplace(options_.stateDir, request.name.value_or(m.containerName), options_.hostName);
    // CRIU restores the user namespace with the maps its images hold, and
    // rootfs-diff/ lands in its host ids: this host must have it free.
    if (m.idMapping) {
      std::string name = request.name.value_or(m.containerName);
      std::lock_guard lock(mutex_);
      checkIdMappingAvailable(*m.idMapping, name);
      importingMappings_[name] = *m.idMapping;  // the name is ours: NameReservation above
      mappingReservation.name = name;
    }
    // Where the staging dir, and so rootfs-diff/, lands (it may be a mount of its own).
    fs::path landing = options_.stateDir / "containers";
    precheckImport(m, HostCapacity::measure(landing), options_.checkpointsInMemory, landing);
    if (options_.checkpointsInMemory) {
      fs::path dir = staging.path() / "checkpoint";
      mountScratchTmpfs(dir, checkpointTmpfsBounds(m));
      checkpointMount = MountGuard(dir);
    }
  }, &signature);
  // readBundle read the stream to its end, and refused a long tail.
  if (sha256) *sha256 = signature.tarSha256;
  // Before anything of the bundle is used: unsigned, untrusted or altered
  // bundles are refused here, and the staging dir goes with them.
  std::string signer = checkBundleSignature(signature, manifest, request.trust);

  auto config = ContainerConfig::fromJson(parseUntrustedJson(readFile(staging.path() / "config.dump"), "config.dump"));
  // Only ever compared with this host's own spec; refused now if it could not be.
  parseUntrustedJson(readFile(staging.path() / "spec.dump"), "spec.dump");
  checkUntrustedConfig(config);
  if (config.id != manifest.containerId || config.name != manifest.containerName) {
    fail(ErrorKind::InvalidInput, "bundle: config.dump names container " + quotedForMessage(config.name) + " (" +
                                      config.id + "), the manifest " + quotedForMessage(manifest.containerName) +
                                      " (" + quotedForMessage(manifest.containerId) + ")");
  }
  if (config.idMapping != manifest.idMapping) {
    fail(ErrorKind::InvalidInput, "bundle: config.dump's user namespace mapping (" + idMappingText(config.idMapping) +
                                      ") is not the manifest's (" + idMappingText(manifest.idMapping) + ")");
  }
  if (config.imageDigest != manifest.imageDigest) {
    fail(ErrorKind::InvalidInput, "bundle: config.dump's image " + config.imageDigest + " is not the manifest's " +
                                      quotedForMessage(manifest.imageDigest));
  }
  auto image = images_.findIfExists(config.imageDigest);
  if (!image) {
    fail(ErrorKind::NotFound, "image " + config.imageDigest + " (" + quotedForMessage(config.imageName) + ") of `" +
                                  config.name + "` is not on " + options_.hostName + "; import it first");
  }
  // Shown and written into the container's files: this host's own name for it.
  config.imageName = image->names.empty() ? image->digest : image->names.front();
  bool renamed = request.name && *request.name != config.name;
  if (renamed) {
    config.name = *request.name;
    config.id = newContainerId();
    config.hostname = config.name;
  }
  std::lock_guard lock(mutex_);  // the commit
  if (findIfExists(config.name)) {
    fail(ErrorKind::Conflict, "name `" + config.name + "` is in use on " + options_.hostName + ": a container has it");
  }
  // Another import may have committed an overlapping mapping since the manifest.
  if (config.idMapping) checkIdMappingAvailable(*config.idMapping, config.name);

  Container c;
  c.config = config;
  c.paths = pathsFor(config.id);
  if (fs::exists(c.paths.dir)) fail(ErrorKind::Conflict, "container id " + config.id + " exists on " + options_.hostName);
  c.state.status = ContainerStatus::Checkpointed;
  c.state.checkpointedAt = manifest.createdAt;
  c.state.checkpointTcpEstablished = manifest.tcpEstablished;
  c.state.migrationId = request.migrationId;
  if (!renamed && fs::exists(staging.path() / "network.status")) {
    auto status = parseNetworkStatus(readFile(staging.path() / "network.status"));
    c.state.networkStatus = json::parse(serializeNetworkStatus(status));
    c.state.ip = requestedIp(status).value_or("");
    c.state.mac = requestedMac(status).value_or("");
  }
  // The staging dir becomes the container dir: rootfs-diff/ is the new upper
  // (optional in a bundle: none means the container wrote nothing).
  if (fs::exists(staging.path() / "rootfs-diff")) fs::rename(staging.path() / "rootfs-diff", staging.path() / "upper");
  fs::create_directories(staging.path() / "upper");
  fs::create_directories(staging.path() / "bundle");
  fs::rename(staging.path(), c.paths.dir);  // the tmpfs mount moves with its parent
  checkpointMount.release();
  staging.keep();
  save(c);
  logInfo("imported `" + c.config.name + "` from " + manifest.sourceHost + ", " + signer);
  return c;
}

void Agent::removeStaleImports() {
  std::lock_guard lock(mutex_);
  for (auto& entry : fs::directory_iterator(options_.stateDir / "containers")) {
    if (entry.path().filename().string().rfind(kImportPrefix, 0) != 0) continue;
    try {
      auto held = ImportLock::tryAcquire(entry.path());
      if (!held) continue;  // a live import, in another process
      logWarn("removing " + entry.path().string() + ", left by an import that did not finish");
      releaseDirectory(entry.path() / "checkpoint");  // its CRIU images' tmpfs
      removeTree(entry.path());
    } catch (const std::exception& e) {
      logError(std::string("could not remove a stale import: ") + e.what());
    }
  }
}

}  // namespace migrate
