#include "agent/agent.h"

#include <signal.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <thread>

#include "agent/bundle.h"
#include "agent/container-cgroup.h"
#include "agent/criu-image-check.h"
#include "agent/identifiers.h"
#include "agent/oci-spec.h"
#include "agent/storage.h"
#include "common/error.h"
#include "common/files.h"
#include "common/log.h"
#include "common/syscall.h"
#include "common/timestamp.h"
#include "common/untrusted-json.h"
#include "net/announce.h"
#include "net/netns-lock.h"

namespace migrate {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

Agent::Agent(AgentOptions options)
    : options_([&] {
        if (options.runtime.runcRoot.empty()) options.runtime.runcRoot = options.stateDir / "runc";
        return std::move(options);
      }()),
      images_(options_.stateDir / "images"),
      runtime_(options_.runtime),
      network_(options_.stateDir, options_.cniConfig),
      trash_(options_.stateDir / "trash") {
  fs::create_directories(options_.stateDir / "containers");
  // runc reads CRIU options from the file named by the org.criu.config
  // annotation. nftables locks the network during a TCP dump and restore:
  // CRIU's default (iptables) would touch the host's tables.
  writeFileAtomic(criuConfig(), "network-lock nftables\n");
  removeStaleImports();
}

void Agent::prepareCheckpointDirectory(const fs::path& dir) {
  releaseDirectory(dir);
  if (options_.checkpointsInMemory) mountScratchTmpfs(dir);
  else fs::create_directories(dir);
}

fs::path Agent::criuConfig() const { return options_.stateDir / "criu.conf"; }

ContainerPaths Agent::pathsFor(const std::string& id) const {
  return ContainerPaths{options_.stateDir / "containers" / id};
}

std::string Agent::cgroupsPath(const std::string& id) const {
  return "/migrate/" + options_.hostName + "/" + id;
}

std::string Agent::relayCgroupPath(const std::string& migrationId) const {
  return "/migrate-relays/" + options_.hostName + "/" + migrationId;
}

Container Agent::load(const fs::path& dir) {
  auto j = json::parse(readFile(dir / "container.json"));
  return Container{ContainerConfig::fromJson(j.at("config")), ContainerState::fromJson(j.at("state")),
                   ContainerPaths{dir}};
}

void Agent::save(const Container& c) {
  json j = {{"config", c.config.toJson()}, {"state", c.state.toJson()}};
  writeFileAtomic(c.paths.record(), j.dump(2));
}

// Brings the record in line with what runc says: a container whose process
// died while nobody watched is Stopped, with conmon's exit code.
Container Agent::refresh(Container c) {
  if (c.state.status != ContainerStatus::Running) return c;
  auto rs = runtime_.stateIfExists(c.config.id);
  if (rs && rs->status == "running") return c;
  c.state.status = ContainerStatus::Stopped;
  if (auto code = readFileIfExists(c.paths.exitDir() / c.config.id)) {
    try {
      c.state.exitCode = std::stoi(*code);
    } catch (const std::exception&) {
    }
  }
  save(c);
  return c;
}

std::vector<Container> Agent::list() {
  std::lock_guard lock(mutex_);
  std::vector<Container> out;
  for (auto& entry : fs::directory_iterator(options_.stateDir / "containers")) {
    if (!fs::exists(entry.path() / "container.json")) continue;  // an import in progress
    try {
      out.push_back(refresh(load(entry.path())));
    } catch (const std::exception& e) {
      logWarn("skipping container dir " + entry.path().string() + ": " + e.what());
    }
  }
  std::sort(out.begin(), out.end(), [](auto& a, auto& b) { return a.config.createdAt < b.config.createdAt; });
  return out;
}

std::optional<std::vector<Container>> Agent::listIfIdle() {
  // Short operations (logs, inspect) finish within this; a long export or
  // import does not, and then the caller does without the list.
  std::unique_lock lock(mutex_, std::chrono::milliseconds(250));
  if (!lock.owns_lock()) return std::nullopt;
  return list();
}

std::optional<Container> Agent::findIfExists(const std::string& ref) {
  std::lock_guard lock(mutex_);
  std::optional<Container> byPrefix;
  int prefixMatches = 0;
  for (auto& c : list()) {
    if (c.config.name == ref || c.config.id == ref) return c;
    if (ref.size() >= 6 && c.config.id.rfind(ref, 0) == 0) {
      byPrefix = c;
      ++prefixMatches;
    }
  }
  if (prefixMatches == 1) return byPrefix;
  return std::nullopt;
}

Container Agent::inspect(const std::string& ref) {
  auto c = findIfExists(ref);
  if (!c) fail(ErrorKind::NotFound, "container `" + ref + "` not found on " + options_.hostName);
  return *c;
}

namespace {

OverlayPaths overlayPaths(const Container& c, fs::path lower) {
  return OverlayPaths{std::move(lower), c.paths.upper(), c.paths.work(), c.paths.rootfs(), c.config.idMapping,
                      c.paths.mappedLower()};
}

}  // namespace

void Agent::prepareStorage(const Container& c) {
  auto image = images_.find(c.config.imageDigest);
  if (c.config.idMapping) {
    fs::create_directories(c.paths.rootfs());
    makeSearchable(c.paths.rootfs(), options_.stateDir);
  }
  mountOverlay(overlayPaths(c, images_.rootfsPath(image)));
}

std::vector<IdMapping> Agent::mappingsInUse() {
  std::lock_guard lock(mutex_);
  std::vector<IdMapping> taken;
  for (auto& other : list()) {
    if (other.config.idMapping) taken.push_back(*other.config.idMapping);
  }
  for (auto& [name, mapping] : importingMappings_) taken.push_back(mapping);
  return taken;
}

void Agent::checkIdMappingAvailable(const IdMapping& mapping, const std::string& name) {
  std::lock_guard lock(mutex_);
  if (mapping.size != kIdMappingSize) {
    fail(ErrorKind::InvalidInput, "user namespace mapping " + mapping.text() + " of `" + name + "` is not " +
                                      std::to_string(kIdMappingSize) + " ids, one container's");
  }
  if (!options_.idRange.contains(mapping)) {
    fail(ErrorKind::Conflict, "user namespace mapping " + mapping.text() + " of `" + name + "` is outside " +
                                  options_.hostName + "'s range " + options_.idRange.text() + " (--userns-range)");
  }
  for (auto& other : list()) {
    if (!other.config.idMapping || other.config.name == name || !other.config.idMapping->overlaps(mapping)) continue;
    refuseOverlap(mapping, name, *other.config.idMapping, other.config.name, " on " + options_.hostName);
  }
  for (auto& [other, theirs] : importingMappings_) {
    if (other != name && theirs.overlaps(mapping)) {
      refuseOverlap(mapping, name, theirs, other, ", being imported on " + options_.hostName);
    }
  }
}

// The spec is always this host's own, generated from its image and the
// container's checked config: nothing security-relevant is taken from a
// bundle's spec.dump (hooks, mount sources, devices, capabilities, namespace
// paths, seccomp or LSM settings). The spec it was checkpointed with is only
// compared, and what differs is logged. CRIU restores into the same mounts
// and namespaces because the source generated its spec the same way.
void Agent::writeSpec(Container& c, const std::optional<json>& checkpointedSpec, const NetworkHookRequest& hook) {
  SpecInputs inputs;
  inputs.rootfs = c.paths.rootfs();
  inputs.bindMounts = makeBindMounts(c.config, c.paths.userdata(), c.state.ip);
  if (network_.attachesFromHook(c)) {
    inputs.networkHook = networkHookCommand(options_.stateDir, *options_.cniConfig, hook);
  } else if (!c.state.netns.empty()) {
    inputs.netns = c.state.netns;
  }
  inputs.cgroupsPath = cgroupsPath(c.config.id);
  inputs.criuConfig = criuConfig();
  auto image = images_.find(c.config.imageDigest);
  inputs.imageEnv = image.config.env;
  inputs.imageWorkingDir = image.config.workingDir;
  inputs.imageUser = image.config.user;
  json spec = generateSpec(c.config, inputs);
  if (checkpointedSpec) {
    auto changes = specDifferences(*checkpointedSpec, spec, inputs);
    for (size_t i = 0; i < changes.size() && i < 20; ++i) {
      logWarn("`" + c.config.name + "`: spec.dump differs from this host's spec, not used: " + changes[i]);
    }
    if (changes.size() > 20) logWarn("`" + c.config.name + "`: " + std::to_string(changes.size() - 20) + " more spec.dump differences");
  }
  fs::create_directories(c.paths.bundle());
  writeFileAtomic(c.paths.spec(), spec.dump(2));
}

Container Agent::run(const RunRequest& request) {
  std::lock_guard lock(mutex_);
  ErrorContext context("run `" + request.name + "`");
  checkContainerName(request.name, "name");
  if (findIfExists(request.name)) fail(ErrorKind::Conflict, "a container with this name exists on " + options_.hostName);
  auto image = images_.find(request.image);

  Container c;
  c.config.id = newContainerId();
  c.config.name = request.name;
  c.config.imageDigest = image.digest;
  c.config.imageName = image.names.empty() ? image.digest : image.names.front();
  c.config.args = request.args;
  if (c.config.args.empty()) {
    c.config.args = image.config.entrypoint;
    c.config.args.insert(c.config.args.end(), image.config.cmd.begin(), image.config.cmd.end());
  }
  c.config.env = request.env;
  c.config.workingDir = request.workingDir;
  c.config.user = request.user;
  c.config.hostname = request.hostname.empty() ? request.name : request.hostname;
  c.config.network = request.network && options_.cniConfig.has_value();
  c.config.createdAt = nowUtc();
  if (!request.hostUserns) c.config.idMapping = allocateIdMapping(options_.idRange, c.config.id, mappingsInUse());
  checkContainerUser(c.config.user, c.config.idMapping, "user");
  c.paths = pathsFor(c.config.id);
  fs::create_directories(c.paths.dir);
  c.state.status = ContainerStatus::Created;
  save(c);

  try {
    prepareStorage(c);
    if (!network_.attachesFromHook(c)) network_.setup(c, std::nullopt, std::nullopt, nullptr);
    writeSpec(c, std::nullopt, NetworkHookRequest{c.config.id, std::nullopt, std::nullopt, false});
    c.state.pid = runtime_.create(c.config.id, c.paths);
    network_.requireAttachment(c);
    runtime_.start(c.config.id);
    c.state.status = ContainerStatus::Running;
    c.state.startedAt = nowUtc();
    save(c);
  } catch (...) {
    // Nothing half-made stays: runc state, mounts, network, the directory.
    try {
      runtime_.remove(c.config.id);
      cleanupAfterStop(c);
      unmountAllUnder(c.paths.dir);  // the idmapped lower is the shared image: never removed through it
      removeTree(c.paths.dir);
    } catch (const std::exception& e) {
      logWarn("cleanup after failed run of `" + request.name + "`: " + e.what());
    }
    throw;
  }
  logInfo("started `" + c.config.name + "` (" + c.config.id + ") pid " + std::to_string(c.state.pid));
  return c;
}

std::string Agent::logs(const std::string& ref, size_t tailLines) {
  auto c = inspect(ref);
  // conmon writes k8s-file lines: "<time> <stream> <F|P> <text>"; show the text.
  // The log grows as long as the container writes: read its tail only, as
  // much as a bundle carries (a first line cut in two is dropped below).
  auto raw = readFileTailIfExists(c.paths.log(), bundle::kMaxCtrLogBytes).value_or("");
  if (raw.size() == bundle::kMaxCtrLogBytes) {
    auto nl = raw.find('\n');
    raw.erase(0, nl == std::string::npos ? raw.size() : nl + 1);
  }
  std::string out;
  size_t pos = 0;
  while (pos < raw.size()) {
    auto nl = raw.find('\n', pos);
    if (nl == std::string::npos) nl = raw.size();
    std::string line = raw.substr(pos, nl - pos);
    pos = nl + 1;
    size_t field = 0, cut = 0;
    for (int i = 0; i < 3 && cut != std::string::npos; ++i) {
      cut = line.find(' ', field);
      if (cut != std::string::npos) field = cut + 1;
    }
    bool partial = line.size() > 0 && line.find(" P ") != std::string::npos && line.find(" P ") < field;
    out += cut == std::string::npos ? line : line.substr(field);
    if (!partial) out += "\n";
  }
  if (tailLines > 0) {
    size_t count = 0, p = out.size();
    if (p > 0 && out[p - 1] == '\n') --p;
    while (p > 0) {
      if (out[p - 1] == '\n' && ++count == tailLines) break;
      --p;
    }
    out = out.substr(p);
  }
  return out;
}

void Agent::cleanupAfterStop(Container& c) {
  network_.adoptAttachment(c);  // a hook's attachment not taken yet (a failed create or restore) is torn down too
  unmountOverlay(overlayPaths(c, {}));
  network_.teardown(c);
  pruneCgroupParents();
}

// runc removes a container's own cgroups but not the parents we put it under
// (/migrate/<host>); remove those once they are empty, in every hierarchy.
void Agent::pruneCgroupParents() {
  for (auto& parent : {"/migrate/" + options_.hostName, std::string("/migrate")}) {
    for (auto& dir : cgroupDirs(parent)) {
      ::rmdir(dir.c_str());  // fails while in use (EBUSY, ENOTEMPTY): then it stays, rightly
    }
  }
}

void Agent::stop(const std::string& ref, int timeoutSeconds) {
  std::lock_guard lock(mutex_);
  auto c = inspect(ref);
  ErrorContext context("stop `" + c.config.name + "`");
  if (c.state.status == ContainerStatus::Running) {
    runtime_.kill(c.config.id, SIGTERM);
    auto deadline = Clock::now() + std::chrono::seconds(timeoutSeconds);
    for (;;) {
      auto rs = runtime_.stateIfExists(c.config.id);
      if (!rs || rs->status == "stopped") break;
      if (Clock::now() > deadline) {
        runtime_.kill(c.config.id, SIGKILL);
        deadline = Clock::now() + std::chrono::seconds(10);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  runtime_.remove(c.config.id);
  c = refresh(c);
  if (c.state.status == ContainerStatus::Running || c.state.status == ContainerStatus::Created) {
    c.state.status = ContainerStatus::Stopped;
  }
  cleanupAfterStop(c);
  save(c);
}

void Agent::refuseIfExporting(const Container& c) {
  if (exporting_.count(c.config.id)) {
    fail(ErrorKind::Conflict, "`" + c.config.name + "` is being exported (a migration streams it)");
  }
}

void Agent::remove(const std::string& ref, bool force) {
  std::lock_guard lock(mutex_);
  auto c = inspect(ref);
  ErrorContext context("remove `" + c.config.name + "`");
  refuseIfExporting(c);
  if (c.state.status == ContainerStatus::Running) {
    if (!force) fail(ErrorKind::Conflict, "container is running (stop it first, or force)");
    runtime_.kill(c.config.id, SIGKILL);
  }
  runtime_.remove(c.config.id);
  cleanupAfterStop(c);
  releaseDirectory(c.paths.checkpoint());
  unmountAllUnder(c.paths.dir);  // the idmapped lower is the shared image: never removed through it
  trash_.discard(c.paths.dir);
  logInfo("removed `" + c.config.name + "`");
}

Container Agent::checkpoint(const std::string& ref, const CheckpointRequest& request, PhaseTimes* times) {
  std::lock_guard lock(mutex_);
  auto c = inspect(ref);
  ErrorContext context("checkpoint of `" + c.config.name + "`");
  if (c.state.status != ContainerStatus::Running) {
    fail(ErrorKind::Conflict, "container is " + statusName(c.state.status) + ", not running");
  }
  prepareCheckpointDirectory(c.paths.checkpoint());
  auto start = Clock::now();
  runtime_.checkpoint(c.config.id, c.paths, CheckpointOptions{request.tcpEstablished, request.leaveRunning});
  if (times) times->add("dump", secondsSince(start));
  recordCheckpoint(c, request);
  if (!request.leaveRunning) markCheckpointed(c);
  save(c);
  logInfo("checkpointed `" + c.config.name + "`");
  return c;
}

// Its processes are gone (the dump ended them): only the checkpoint is left.
void Agent::markCheckpointed(Container& c) {
  runtime_.remove(c.config.id);
  c.state.status = ContainerStatus::Checkpointed;
  c.state.pid = 0;
  cleanupAfterStop(c);
}

void Agent::recordCheckpoint(Container& c, const CheckpointRequest& request) {
  // What a restore elsewhere needs beside the CRIU images (libpod's checkpoint()).
  writeFileAtomic(c.paths.dir / "network.status", c.state.networkStatus.dump(2));
  writeFileAtomic(c.paths.dir / "config.dump", c.config.toJson().dump(2));
  fs::copy_file(c.paths.spec(), c.paths.dir / "spec.dump", fs::copy_options::overwrite_existing);
  c.state.checkpointedAt = nowUtc();
  c.state.checkpointTcpEstablished = request.tcpEstablished;
}

Container Agent::restore(const std::string& ref, const RestoreRequest& request, PhaseTimes* times) {
  std::lock_guard lock(mutex_);
  auto c = inspect(ref);
  ErrorContext context("restore of `" + c.config.name + "`");
  refuseIfExporting(c);
  if (c.state.status != ContainerStatus::Checkpointed) {
    fail(ErrorKind::Conflict, "container is " + statusName(c.state.status) + ", not checkpointed");
  }
  if (request.lazyPages && c.config.idMapping) checkLazyRestoreSupported();
  if (!fs::exists(c.paths.checkpoint() / "inventory.img")) {
    fail(ErrorKind::NotFound, "a complete checkpoint cannot be found (" +
                                  (c.paths.checkpoint() / "inventory.img").string() + " is missing)");
  }
  auto start = Clock::now();
  std::optional<json> checkpointedSpec;
  if (auto text = readFileIfExists(c.paths.dir / "spec.dump")) {
    try {
      checkpointedSpec = parseUntrustedJson(*text, "spec.dump");
    } catch (const Error& e) {
      logWarn("`" + c.config.name + "`: " + e.what() + "; not compared");
    }
  }

  // Held from before the address appears until runc restore re-created the
  // sockets. On failure it is not lifted: the netns goes with the cleanup,
  // lock and address together (unlocked first, a peer's retransmission would
  // meet the address without its socket and reset the connection the source
  // is about to resume).
  std::optional<NetnsLockGuard> netnsLock;
  try {
    prepareStorage(c);
    if (times) times->add("storage", secondsSince(start));
    start = Clock::now();
    // Read the address it had (libpod's requestedIP) unless told otherwise.
    std::optional<std::string> ip, mac;
    if (!request.ignoreStaticIp && !c.state.ip.empty()) ip = c.state.ip;
    if (!request.ignoreStaticMac && !c.state.mac.empty()) mac = c.state.mac;
    if (network_.attachesFromHook(c)) {
      // A netns left from its last life here (a rollback): the hook makes a new one.
      network_.teardown(c);
    } else {
      network_.setup(c, ip, mac, &netnsLock);
    }
    writeSpec(c, checkpointedSpec, NetworkHookRequest{c.config.id, ip, mac, true});
    if (times) times->add("network", secondsSince(start));
    start = Clock::now();
    // The images may come from another host: checked against the spec this
    // host just wrote, before CRIU (as root) reads them.
    checkCriuImages(c.paths.checkpoint(), json::parse(readFile(c.paths.spec())), c.paths.rootfs());
    if (times) times->add("image-check", secondsSince(start));
    start = Clock::now();
    bool tcp = request.tcpEstablished || c.state.checkpointTcpEstablished;
    if (c.config.idMapping) {
      // CRIU reads some images as host root without capabilities (the
      // restored task, in its new user namespace before the maps are
      // written: the time namespace's) and the rest as the container's root
      // (host id hostId): both may read them, no one else. Root owns the
      // directory and files, the container root's group reads them.
      gid_t group = c.config.idMapping->hostId;
      Fd dir = openOrFail(c.paths.checkpoint(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
      SYSCALL(::fchown(dir.get(), 0, group), "fchown", c.paths.checkpoint().string());
      SYSCALL(::fchmod(dir.get(), 0750), "fchmod", c.paths.checkpoint().string());
      for (auto& image : fs::directory_iterator(c.paths.checkpoint())) {
        // By fd, never through a symlink: only the images themselves.
        int raw = ::openat(dir.get(), image.path().filename().c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
        if (raw < 0) continue;  // a symlink (ELOOP) or gone: CRIU reads nothing through it either
        Fd file(raw);
        struct stat st;
        SYSCALL(::fstat(file.get(), &st), "fstat", image.path().string());
        if (!S_ISREG(st.st_mode)) continue;
        SYSCALL(::fchown(file.get(), 0, group), "fchown", image.path().string());
        SYSCALL(::fchmod(file.get(), (st.st_mode & 0600) | 0040), "fchmod", image.path().string());
      }
    }
    c.state.pid = runtime_.restore(c.config.id, c.paths, RestoreOptions{tcp, request.lazyPages, cgroupsPath(c.config.id)});
    network_.requireAttachment(c);
    if (!c.state.netns.empty()) {
      if (!netnsLock) netnsLock.emplace(NetnsLockGuard::adopt(c.state.netns));  // the hook locked it
      netnsLock->unlock();
      if (!c.state.ip.empty()) announceAddress(c.state.netns, "eth0", c.state.ip);
    }
    if (times) times->add("restore", secondsSince(start));
  } catch (...) {
    if (netnsLock) netnsLock->release();
    try {
      runtime_.remove(c.config.id);
      cleanupAfterStop(c);
      save(c);
    } catch (const std::exception& e) {
      logWarn("cleanup after failed restore of `" + c.config.name + "`: " + e.what());
    }
    throw;
  }
  c.state.status = ContainerStatus::Running;
  c.state.startedAt = nowUtc();
  c.state.exitCode.reset();
  save(c);
  if (!request.keepCheckpoint && !request.lazyPages) releaseCheckpointFiles(c);
  logInfo("restored `" + c.config.name + "` pid " + std::to_string(c.state.pid));
  return c;
}

void Agent::releaseCheckpoint(const std::string& ref) {
  std::lock_guard lock(mutex_);
  releaseCheckpointFiles(inspect(ref));
}

void Agent::releaseCheckpointFiles(const Container& c) {
  releaseDirectory(c.paths.checkpoint());
  for (auto name : {"network.status", "config.dump", "spec.dump", "manifest.json", "deleted.files", "stats-dump"}) {
    fs::remove(c.paths.dir / name);
  }
}

}  // namespace migrate
