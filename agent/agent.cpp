#include "agent/agent.h"

#include <signal.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <functional>
#include <cstring>
#include <sstream>
#include <thread>

#include "agent/bundle-reader.h"
#include "agent/bundle-writer.h"
#include "agent/bundle.h"
#include "agent/capacity.h"
#include "agent/criu-image-check.h"
#include "agent/identifiers.h"
#include "agent/oci-spec.h"
#include "agent/storage.h"
#include "common/error.h"
#include "common/files.h"
#include "common/hash-stream.h"
#include "common/log.h"
#include "common/untrusted-json.h"
#include "common/syscall.h"
#include "common/zstd-stream.h"
#include "net/announce.h"
#include "net/cni.h"
#include "net/netns-lock.h"
#include "net/netns.h"
#include "net/network-status.h"

namespace migrate {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

double secondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

constexpr std::string_view kImportPrefix = ".import";

// An exclusive flock(2) on a file or directory, held by an open file
// description: the kernel lets go when its holder dies however it dies, so
// a lock left by a killed import is simply free. Across processes and
// between two opens in one process alike.
class ImportLock {
 public:
  // nullopt when another holds it.
  static std::optional<ImportLock> tryAcquire(const fs::path& path, int flags = O_RDONLY | O_DIRECTORY) {
    Fd fd = openOrFail(path, flags | O_NOFOLLOW, 0600);
    if (::flock(fd.get(), LOCK_EX | LOCK_NB) < 0) {
      if (errno == EWOULDBLOCK) return std::nullopt;
      failErrno(errno, "flock " + path.string());
    }
    return ImportLock(std::move(fd));
  }
  int fd() const { return fd_.get(); }

 private:
  explicit ImportLock(Fd fd) : fd_(std::move(fd)) {}
  Fd fd_;
};

// A container name reserved while it is imported: a lock file per name under
// stateDir/names/, removed again by its holder (the classic lock-unlink
// dance: a waiter that locked an unlinked file tries again).
class NameReservation {
 public:
  NameReservation(const fs::path& stateDir, const std::string& name, const std::string& host) {
    fs::path dir = stateDir / "names";
    fs::create_directories(dir);
    // Hashed: the name comes from a bundle and must not steer a path.
    path_ = dir / sha256Hex(name);
    for (;;) {
      auto lock = ImportLock::tryAcquire(path_, O_RDWR | O_CREAT);
      if (!lock) fail(ErrorKind::Conflict, "name `" + name + "` is in use on " + host + ": another import is receiving it");
      struct stat held, named;
      SYSCALL(::fstat(lock->fd(), &held), "fstat", path_.string());
      if (::stat(path_.c_str(), &named) == 0 && named.st_ino == held.st_ino && named.st_dev == held.st_dev) {
        lock_.emplace(std::move(*lock));
        return;
      }
    }
  }
  NameReservation(const NameReservation&) = delete;
  NameReservation& operator=(const NameReservation&) = delete;
  ~NameReservation() { ::unlink(path_.c_str()); }  // while still locked; the Fd closes after

 private:
  fs::path path_;
  std::optional<ImportLock> lock_;
};

}  // namespace

Agent::Agent(AgentOptions options)
    : options_([&] {
        if (options.runtime.runcRoot.empty()) options.runtime.runcRoot = options.stateDir / "runc";
        return std::move(options);
      }()),
      images_(options_.stateDir / "images"),
      runtime_(options_.runtime),
      cni_(agentCniClient(options_.stateDir)) {
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

fs::path Agent::criuConfig() const { return options_.stateDir / "criu.conf"; }

ContainerPaths Agent::pathsFor(const std::string& id) const {
  return ContainerPaths{options_.stateDir / "containers" / id};
}

std::string Agent::cgroupsPath(const std::string& id) const {
  return "/migrate/" + options_.hostName + "/" + id;
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
  std::vector<IdMapping> taken;
  for (auto& other : list()) {
    if (other.config.idMapping) taken.push_back(*other.config.idMapping);
  }
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
}

bool Agent::attachesFromHook(const Container& c) const {
  return c.config.idMapping && c.config.network && options_.cniConfig;
}

void Agent::adoptNetworkAttachment(Container& c) {
  auto text = readFileIfExists(c.paths.networkAttachment());
  if (!text) return;
  auto status = parseNetworkStatus(*text);
  c.state.netns = containerNetnsPath(options_.stateDir, c.config.id).string();
  c.state.networkStatus = json::parse(serializeNetworkStatus(status));
  c.state.ip = requestedIp(status).value_or("");
  c.state.mac = requestedMac(status).value_or("");
  fs::remove(c.paths.networkAttachment());
}

void Agent::requireNetworkAttachment(Container& c) {
  adoptNetworkAttachment(c);
  if (attachesFromHook(c) && c.state.netns.empty()) {
    fail("network hook of `" + c.config.name + "` left no attachment (runc ran no prestart hook?)");
  }
}

// A persistent netns for the container, attached to the host's CNI network
// with the requested address and MAC when given (libpod's requestedIP). When
// `lock` is set the netns is locked shut before the address appears in it,
// until the restore has re-created the sockets (DESIGN.md: a client's
// retransmission meeting the address without its socket gets a RST).
void Agent::setupNetwork(Container& c, std::optional<std::string> ip, std::optional<std::string> mac, bool lock) {
  if (!c.config.network || !options_.cniConfig) {
    // Loopback only: runc gives the container a fresh network namespace.
    c.state.netns.clear();
    c.state.networkStatus = json::array();
    return;
  }
  ErrorContext context("network");
  auto network = CniNetwork::load(*options_.cniConfig);
  fs::path netns = containerNetnsPath(options_.stateDir, c.config.id);
  fs::create_directories(netns.parent_path());
  if (netnsExists(netns)) removeNetns(netns);
  NetnsGuard guard(netns);
  if (lock) lockNetns(netns);
  CniAttachment attachment{c.config.id, netns, "eth0", ip, mac};
  auto result = cni_.add(network, attachment);
  c.state.netns = guard.release().string();
  std::vector<CniResult> status = {result};
  c.state.networkStatus = json::parse(serializeNetworkStatus(status));
  c.state.ip = requestedIp(status).value_or("");
  c.state.mac = requestedMac(status).value_or("");
}

void Agent::teardownNetwork(Container& c) {
  if (c.state.netns.empty()) return;
  if (options_.cniConfig) {
    std::optional<CniResult> prev;
    auto results = parseNetworkStatus(c.state.networkStatus.dump());
    if (!results.empty()) prev = results.front();
    try {
      cni_.del(CniNetwork::load(*options_.cniConfig), CniAttachment{c.config.id, c.state.netns, "eth0", {}, {}}, prev);
    } catch (const std::exception& e) {
      logWarn("cni: DEL of `" + c.config.name + "`: " + e.what());
    }
  }
  removeNetns(c.state.netns);
  c.state.netns.clear();
}

void Agent::releaseAddress(Container& c) {
  if (c.state.netns.empty() || !options_.cniConfig) return;
  std::optional<CniResult> prev;
  auto results = parseNetworkStatus(c.state.networkStatus.dump());
  if (!results.empty()) prev = results.front();
  cni_.del(CniNetwork::load(*options_.cniConfig), CniAttachment{c.config.id, c.state.netns, "eth0", {}, {}}, prev);
}

void Agent::reattachAddress(Container& c) {
  if (c.state.netns.empty() || !options_.cniConfig || !netnsExists(c.state.netns)) return;
  ErrorContext context("network");
  std::optional<std::string> ip, mac;
  if (!c.state.ip.empty()) ip = c.state.ip;
  if (!c.state.mac.empty()) mac = c.state.mac;
  cni_.add(CniNetwork::load(*options_.cniConfig), CniAttachment{c.config.id, c.state.netns, "eth0", ip, mac});
  if (ip) announceAddress(c.state.netns, "eth0", *ip);
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
  if (attachesFromHook(c)) {
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
  c.config.createdAt = nowIso8601();
  if (!request.hostUserns) c.config.idMapping = allocateIdMapping(options_.idRange, c.config.id, mappingsInUse());
  checkContainerUser(c.config.user, c.config.idMapping, "user");
  c.paths = pathsFor(c.config.id);
  fs::create_directories(c.paths.dir);
  c.state.status = ContainerStatus::Created;
  save(c);

  try {
    prepareStorage(c);
    if (!attachesFromHook(c)) setupNetwork(c, std::nullopt, std::nullopt, false);
    writeSpec(c, std::nullopt, NetworkHookRequest{c.config.id, std::nullopt, std::nullopt, false});
    c.state.pid = runtime_.create(c.config.id, c.paths);
    requireNetworkAttachment(c);
    runtime_.start(c.config.id);
    c.state.status = ContainerStatus::Running;
    c.state.startedAt = nowIso8601();
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
  adoptNetworkAttachment(c);  // a hook's attachment not taken yet (a failed create or restore) is torn down too
  unmountOverlay(overlayPaths(c, {}));
  teardownNetwork(c);
  pruneCgroupParents();
}

// runc removes a container's own cgroups but not the parents we put it under
// (/migrate/<host>); remove those once they are empty, in every hierarchy.
void Agent::pruneCgroupParents() {
  std::error_code ec;
  for (auto& controller : fs::directory_iterator("/sys/fs/cgroup", ec)) {
    for (auto dir : {controller.path() / "migrate" / options_.hostName, controller.path() / "migrate"}) {
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
  removeTree(c.paths.dir);
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
  c.state.checkpointedAt = nowIso8601();
  c.state.checkpointTcpEstablished = request.tcpEstablished;
}

LazyDump Agent::startLazyCheckpoint(const std::string& ref, const CheckpointRequest& request, uint16_t port,
                                    PhaseTimes* times) {
  std::lock_guard lock(mutex_);
  auto c = inspect(ref);
  ErrorContext context("post-copy checkpoint of `" + c.config.name + "`");
  if (c.state.status != ContainerStatus::Running) {
    fail(ErrorKind::Conflict, "container is " + statusName(c.state.status) + ", not running");
  }
  checkLazyPagesSupported();
  prepareCheckpointDirectory(c.paths.checkpoint());
  auto start = Clock::now();
  auto dump = runtime_.startLazyCheckpoint(c.config.id, c.paths, CheckpointOptions{request.tcpEstablished, false}, port);
  if (times) times->add("dump", secondsSince(start));
  recordCheckpoint(c, request);
  save(c);
  // The target is about to claim the same address (one IPAM for the
  // cluster): give it up, keeping the netns the frozen processes live in.
  releaseAddress(c);
  logInfo("`" + c.config.name + "` frozen; serving its memory on 127.0.0.1:" + std::to_string(port));
  return dump;
}

Container Agent::finishLazyCheckpoint(const std::string& ref, LazyDump& dump) {
  // Not under the agent's lock: the transfer lasts as long as the target's
  // lazy-pages daemon keeps fetching.
  auto c = inspect(ref);
  ErrorContext context("post-copy of `" + c.config.name + "`");
  try {
    runtime_.finishLazyCheckpoint(c.config.id, c.paths, dump);
  } catch (...) {
    std::lock_guard lock(mutex_);
    try {
      // CRIU resumed it on its own: its sockets may have run in repair mode
      // for a moment (reads fail with EPERM), the best we can do now.
      auto resumed = inspect(ref);
      if (!dump.networkReleased) {
        reattachAddress(resumed);
        undoCriuNetworkLock(resumed);
      }
    } catch (const std::exception& e) {
      logWarn("after the failed post-copy of `" + c.config.name + "`: " + e.what());
    }
    throw;
  }
  std::lock_guard lock(mutex_);
  c = inspect(ref);
  markCheckpointed(c);
  save(c);
  logInfo("post-copy of `" + c.config.name + "` complete: every page went");
  return c;
}

Container Agent::abortLazyCheckpoint(const std::string& ref, LazyDump& dump, Fd pageServer) {
  {
    std::lock_guard lock(mutex_);
    auto c = inspect(ref);
    ErrorContext context("giving `" + c.config.name + "` back after a post-copy that did not complete");
    // While CRIU still holds the processes stopped: once they run, a read on
    // a socket still in repair mode fails (EPERM) and the program drops the
    // connection.
    try {
      reattachAddress(c);
      undoCriuNetworkLock(c);
    } catch (const std::exception& e) {
      // Still better running without its network than frozen for good.
      logError(std::string("`") + c.config.name + "` resumes without its network: " + e.what());
    }
    dump.networkReleased = true;
    runtime_.abortLazyCheckpoint(dump, std::move(pageServer));
  }
  try {
    return finishLazyCheckpoint(ref, dump);  // CRIU finished after all: the container is gone here
  } catch (const std::exception& e) {
    logInfo("post-copy of `" + ref + "` undone, the container runs here again (" + e.what() + ")");
  }
  return inspect(ref);
}

// CRIU's lazy dump resumes the container when the page transfer fails, but
// that path skips network_unlock() (cr_dump_finish() decides on unlocking
// before the transfer starts): CRIU's nftables table stays in the netns and
// the dumped TCP sockets stay in repair mode, so no packet flows. Undo both
// as network_unlock() would: drop the CRIU-<pid> tables and take every TCP
// socket of the container's processes out of repair (through a pidfd_getfd()
// duplicate; TCP_REPAIR_OFF on a socket not in repair is harmless).
namespace {

// Every process in the pid namespace of `pid` (a container's init), by pid.
void forEachProcessLike(pid_t pid, const std::function<void(const std::string& pid)>& visit) {
  auto pidNs = [](const std::string& p) {
    std::error_code ec;
    auto target = fs::read_symlink("/proc/" + p + "/ns/pid", ec);
    return ec ? std::string() : target.string();
  };
  std::string containerNs = pidNs(std::to_string(pid));
  if (containerNs.empty()) return;
  for (auto& entry : fs::directory_iterator("/proc")) {
    std::string p = entry.path().filename();
    if (p.find_first_not_of("0123456789") == std::string::npos && pidNs(p) == containerNs) visit(p);
  }
}

}  // namespace

void Agent::undoCriuNetworkLock(const Container& c) {
  if (!c.state.netns.empty()) removeCriuLockTables(c.state.netns);
  if (c.state.pid <= 0) return;
  int sockets = 0, repaired = 0;
  std::string errors;
  forEachProcessLike(c.state.pid, [&](const std::string& pid) {
    Fd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, std::stoi(pid), 0)));
    if (!pidfd) return;
    std::error_code ec;
    for (auto& fdEntry : fs::directory_iterator("/proc/" + pid + "/fd", ec)) {
      auto link = fs::read_symlink(fdEntry.path(), ec);
      if (ec || link.string().rfind("socket:", 0) != 0) continue;
      ++sockets;
      Fd sock(static_cast<int>(::syscall(SYS_pidfd_getfd, pidfd.get(), std::stoi(fdEntry.path().filename()), 0)));
      if (!sock) {
        errors += std::string(" pidfd_getfd: ") + strerror(errno) + ";";
        continue;
      }
      int off = 0;  // TCP_REPAIR_OFF
      // EPERM: not a connected TCP socket (a listener, UDP, unix), so never in repair.
      if (::setsockopt(sock.get(), IPPROTO_TCP, TCP_REPAIR, &off, sizeof off) == 0) ++repaired;
      else if (errno != EPERM && errno != EOPNOTSUPP) errors += " " + link.string() + ": " + strerror(errno) + ";";
    }
  });
  logInfo("`" + c.config.name + "`: CRIU's network lock removed (" + std::to_string(repaired) + " of " +
          std::to_string(sockets) + " socket(s) were TCP connections, out of repair now" +
          (errors.empty() ? "" : ";" + errors) + ")");
}

uint64_t Agent::residentBytes(const std::string& ref) {
  auto c = inspect(ref);
  uint64_t total = 0;
  if (c.state.pid <= 0) return 0;
  forEachProcessLike(c.state.pid, [&](const std::string& pid) {
    std::istringstream status(readFileIfExists("/proc/" + pid + "/status").value_or(""));
    std::string key;
    uint64_t kib = 0;
    while (status >> key) {
      if ((key == "RssAnon:" || key == "RssShmem:") && status >> kib) total += kib << 10;
    }
  });
  return total;
}

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
  m.createdAt = nowIso8601();
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
  Sha256OutputStream hashed(counted);
  ZstdOutputStream zstd(hashed, options.zstdLevel, options.zstdThreads);
  CountingOutputStream raw(zstd);
  writeBundle(sources, raw, options.onProgress);
  zstd.finish();
  hashed.finish();
  return ExportStats{raw.count(), counted.count(), hashed.hexDigest()};
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
  TempDir staging(options_.stateDir / "containers", kImportPrefix);
  auto alive = ImportLock::tryAcquire(staging.path());
  if (!alive) fail(ErrorKind::Conflict, "staging directory " + staging.path().string() + " is locked");
  // The CRIU images land on a tmpfs sized from the manifest, mounted once
  // that is read; unmounted before the staging dir goes if we fail.
  struct CheckpointMount {
    fs::path dir;
    bool armed = false;
    ~CheckpointMount() {
      if (armed) ::umount2(dir.c_str(), MNT_DETACH);
    }
  } checkpointMount{staging.path() / "checkpoint"};
  std::optional<NameReservation> reservation;
  Sha256InputStream hashed(in);
  ZstdInputStream zstd(hashed);
  ReadSignature signature;
  auto manifest = readBundle(zstd, staging.path(), options_.importLimits, [&](const BundleManifest& m) {
    if (onManifest) onManifest(m.toJson());
    reservation.emplace(options_.stateDir, request.name.value_or(m.containerName), options_.hostName);
    // CRIU restores the user namespace with the maps its images hold, and
    // rootfs-diff/ lands in its host ids: this host must have it free.
    if (m.idMapping) checkIdMappingAvailable(*m.idMapping, request.name.value_or(m.containerName));
    // Where the staging dir, and so rootfs-diff/, lands (it may be a mount of its own).
    fs::path landing = options_.stateDir / "containers";
    precheckImport(m, HostCapacity::measure(landing), options_.checkpointsInMemory, landing);
    if (options_.checkpointsInMemory) {
      mountScratchTmpfs(checkpointMount.dir, checkpointTmpfsBounds(m));
      checkpointMount.armed = true;
    }
  }, &signature);
  // Drain what follows the tar's end-of-archive blocks so the hash covers the
  // whole stream the sender hashed.
  char sink[65536];
  while (zstd.read(sink, sizeof sink) > 0) {
  }
  if (sha256) *sha256 = hashed.hexDigest();
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
  checkpointMount.armed = false;
  staging.keep();
  save(c);
  logInfo("imported `" + c.config.name + "` from " + manifest.sourceHost + ", " + signer);
  return c;
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

  try {
    prepareStorage(c);
    if (times) times->add("storage", secondsSince(start));
    start = Clock::now();
    // Read the address it had (libpod's requestedIP) unless told otherwise.
    std::optional<std::string> ip, mac;
    if (!request.ignoreStaticIp && !c.state.ip.empty()) ip = c.state.ip;
    if (!request.ignoreStaticMac && !c.state.mac.empty()) mac = c.state.mac;
    if (attachesFromHook(c)) {
      // A netns left from its last life here (a rollback): the hook makes a new one.
      teardownNetwork(c);
    } else {
      setupNetwork(c, ip, mac, true);
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
    requireNetworkAttachment(c);
    if (!c.state.netns.empty()) {
      unlockNetns(c.state.netns);
      if (!c.state.ip.empty()) announceAddress(c.state.netns, "eth0", c.state.ip);
    }
    if (times) times->add("restore", secondsSince(start));
  } catch (...) {
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
  c.state.startedAt = nowIso8601();
  c.state.exitCode.reset();
  save(c);
  if (!request.keepCheckpoint && !request.lazyPages) releaseCheckpointFiles(c);
  logInfo("restored `" + c.config.name + "` pid " + std::to_string(c.state.pid));
  return c;
}

Subprocess Agent::startLazyPages(const std::string& ref, uint16_t port) {
  auto c = inspect(ref);
  ErrorContext context("lazy-pages daemon for `" + c.config.name + "`");
  return runtime_.startLazyPages(c.paths, port);
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
