#include "agent/agent-daemon.h"

#include <signal.h>
#include <sys/socket.h>
#include <sys/statvfs.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <optional>

#include "agent/criu-stats.h"
#include "agent/id-mapping-proto.h"
#include "common/error.h"
#include "common/files.h"
#include "common/log.h"
#include "common/subprocess.h"
#include "net/data-listener.h"
#include "net/tls-pump.h"
#include "net/tls-stream.h"

namespace migrate {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace {

constexpr const char* kAgentVersion = "0.1.0";
// How long a receiver waits for its sender to connect and prove the key
// (unless the coordinator says otherwise); then it ends and frees its name.
constexpr milliseconds kDefaultAcceptTimeout{60000};
// How long a restore waits for the bundle to be in.
constexpr milliseconds kRestoreWaitForBundle = std::chrono::minutes(10);
// How long abortReceive waits for a stopped receiver's threads (they poll
// their stop flag every 200 ms; an import in progress cleans up first).
constexpr milliseconds kReceiverStopWait = std::chrono::seconds(30);
// Failed receivers remembered for a restore that asks after them.
constexpr size_t kEndedReceiversKept = 32;

uint64_t nanosSince(Clock::time_point start) {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - start).count());
}

proto::ContainerState stateOf(ContainerStatus status) {
  switch (status) {
    case ContainerStatus::Created: return proto::ContainerState::CREATED;
    case ContainerStatus::Running: return proto::ContainerState::RUNNING;
    case ContainerStatus::Stopped: return proto::ContainerState::STOPPED;
    case ContainerStatus::Checkpointed: return proto::ContainerState::CHECKPOINTED;
  }
  return proto::ContainerState::UNKNOWN;
}

void fillContainer(proto::ContainerInfo::Builder out, const Container& c) {
  out.setId(c.config.id);
  out.setName(c.config.name);
  out.setImage(c.config.imageName);
  out.setImageDigest(c.config.imageDigest);
  out.setState(stateOf(c.state.status));
  out.setPid(c.state.pid);
  out.setIp(c.state.ip);
  out.setMac(c.state.mac);
  out.setExitCode(c.state.exitCode.value_or(0));
  if (c.config.idMapping) fillIdMapping(out.initIdMapping(), *c.config.idMapping);
}

void fillContainers(capnp::List<proto::ContainerInfo>::Builder out, const std::vector<Container>& list) {
  for (size_t i = 0; i < list.size(); ++i) fillContainer(out[static_cast<unsigned>(i)], list[i]);
}

void fillImages(capnp::List<proto::ImageInfo>::Builder out, const std::vector<ImageInfo>& images) {
  for (size_t i = 0; i < images.size(); ++i) {
    auto b = out[static_cast<unsigned>(i)];
    b.setDigest(images[i].digest);
    auto names = b.initNames(static_cast<unsigned>(images[i].names.size()));
    for (size_t k = 0; k < images[i].names.size(); ++k) names.set(static_cast<unsigned>(k), images[i].names[k]);
    b.setSizeBytes(images[i].size);
  }
}

std::vector<uint8_t> bytesOf(capnp::Data::Reader data) { return {data.begin(), data.end()}; }

// A bundle manifest's user namespace, as Agent::importCheckpoint hands it
// over (BundleManifest::toJson, already validated): null = the host's.
std::optional<IdMapping> manifestIdMapping(const nlohmann::json& manifest) {
  auto it = manifest.find("idMapping");
  if (it == manifest.end() || it->is_null()) return std::nullopt;
  return IdMapping::fromJson(*it, "bundle manifest: idMapping");
}

uint64_t meminfoField(const std::string& field) {
  std::ifstream in("/proc/meminfo");
  std::string key;
  uint64_t kib;
  std::string unit;
  while (in >> key >> kib) {
    std::getline(in, unit);
    if (key == field + ":") return kib * 1024;
  }
  return 0;
}

}  // namespace

std::string dumpCpuInfo() {
  TempDir dir("/tmp", "migrate-cpuinfo");
  run({"criu", "cpuinfo", "dump", "-D", dir.path().string()});
  return readFile(dir.path() / "cpuinfo.img");
}

void checkCpuInfoCompatible(const std::string& cpuInfoImage) {
  TempDir dir("/tmp", "migrate-cpuinfo");
  writeFileAtomic(dir.path() / "cpuinfo.img", cpuInfoImage);
  auto r = runCapture(SubprocessOptions::of({"criu", "cpuinfo", "check", "-D", dir.path().string(), "-v2"}));
  if (r.status != 0) {
    fail(ErrorKind::Conflict, "criu cpuinfo check: this CPU cannot run what the source dumped: " + r.err + r.out);
  }
}

struct AgentDaemon::Receiver {
  std::string migrationId;
  std::string containerName;  // reserved: no other receiver takes this name
  std::vector<uint8_t> psk;
  std::string expectedImage;
  // The source's user namespace mapping; the bundle must carry the same.
  // Checked free here at prepare, and kept from other receivers meanwhile.
  std::optional<IdMapping> idMapping;
  BundleTrust trust;  // exactly the source's key, as the coordinator has it
  bool postCopy = false;
  // Abort, a failed restore, shutdown: every thread of this receiver polls
  // it (accept, TLS reads and writes, the page pump) and ends. Nobody else
  // touches their sockets.
  std::atomic<bool> stop{false};

  std::mutex mutex;  // guards the fields below
  std::condition_variable cv;
  bool done = false;  // the bundle is in (sha256, containerId), or `error`
  std::exception_ptr error;
  std::string sha256;
  std::string containerId;
  int threads = 0;  // its threads still running (launchReceiverThread)

  // Post-copy: the page channel (the sender's second connection), and once
  // restored, the lazy-pages daemon it feeds. Set by the receive thread
  // before `done`; then the page thread's alone.
  std::optional<TlsStream> pageStream;
  std::optional<Subprocess> lazyPages;
  PumpCounters pageCounters;

  // Blocks until the stream was fully imported (or failed).
  void wait(milliseconds timeout) {
    std::unique_lock lock(mutex);
    if (!cv.wait_for(lock, timeout, [&] { return done; })) {
      fail(ErrorKind::Disconnected, "bundle for `" + containerName + "` still not received after " +
                                        std::to_string(timeout.count() / 1000) + " s");
    }
    if (error) std::rethrow_exception(error);
  }

  // After `stop`: true once none of its threads runs any more.
  bool waitStopped(milliseconds timeout) {
    std::unique_lock lock(mutex);
    return cv.wait_for(lock, timeout, [&] { return threads == 0; });
  }
};

// Source side of a post-copy migration: the lazy dump (container frozen,
// CRIU's page server on 127.0.0.1) and the pump that carries its pages to
// the target. The pump ending cleanly (the target's lazy-pages daemon has
// every page) lets CRIU finish, which kills the frozen container here. A cut
// page channel leaves it frozen until rollbackSource, which makes CRIU fail
// on purpose so that it resumes the container (Agent::abortLazyCheckpoint):
// never both at once, because
// the coordinator sends rollbackSource only after the target dropped its copy.
struct AgentDaemon::PostCopySource {
  std::string migrationId;
  std::string containerName;
  std::optional<LazyDump> dump;
  std::optional<TlsStream> pageStream;
  Fd criuSocket;
  PumpCounters counters;
  std::atomic<bool> stop{false};
  Clock::time_point started = Clock::now();
  std::thread thread;
  std::once_flag joined;  // finishPostCopy, rollbackSource and shutdown may all join

  void join() {
    std::call_once(joined, [this] {
      if (thread.joinable()) thread.join();
    });
  }

  std::mutex mutex;
  std::condition_variable cv;
  bool pagesDone = false;   // the pump ended: cleanly, or `error`
  bool finished = false;    // CRIU exited too (the thread is done)
  bool resume = false;      // rollbackSource asked for the container back
  std::exception_ptr error;
  uint64_t pagesNs = 0;
};


AgentDaemon::AgentDaemon(Agent& agent, DaemonOptions options) : agent_(agent), options_(std::move(options)) {
  agent_.removeStaleImports();
  try {
    cpuInfo_ = dumpCpuInfo();
  } catch (const std::exception& e) {
    logWarn(std::string("criu cpuinfo dump failed; prechecks will not compare CPUs: ") + e.what());
  }
}

AgentDaemon::~AgentDaemon() {
  {
    // Shutting down mid post-copy: a transfer still flowing is let finish
    // (the target runs the container and needs every page). One whose channel
    // was cut can no longer help the target's copy, which the coordinator's
    // rollback removes: that container resumes here rather than stay frozen.
    std::lock_guard lock(postCopiesMutex_);
    for (auto& [name, p] : postCopies_) {
      std::unique_lock plock(p->mutex);
      if (!p->pagesDone) logInfo("stopping: waiting for the post-copy of `" + name + "` to send its last page");
      p->cv.wait(plock, [&] { return p->pagesDone; });
      p->resume = true;
      p->cv.notify_all();
    }
  }
  for (auto& [name, p] : postCopies_) {
    p->join();
  }
  // Receivers stop where they are: waiting for a sender, reading a bundle or
  // pumping pages (an import in progress cleans up after itself). So do
  // image receives, among the workers.
  std::map<uint64_t, std::thread> receiverThreads;
  {
    std::lock_guard lock(receiversMutex_);
    stopping_ = true;
    for (auto& [id, r] : receivers_) r->stop = true;
    receiverThreads.swap(receiverThreads_);
  }
  for (auto& [key, thread] : receiverThreads) thread.join();
  workers_.joinAll();
}

void AgentDaemon::post(Outgoing message) {
  {
    std::lock_guard lock(outboxMutex_);
    outbox_.push_back(std::move(message));
  }
  wakeup_.notify();
}

void AgentDaemon::postProgress(const std::string& migrationId, uint64_t requestId, Phase phase,
                               uint64_t done, uint64_t total, const std::exception* failure) {
  auto message = std::make_unique<capnp::MallocMessageBuilder>();
  auto p = message->initRoot<proto::Message>().initProgress();
  p.setMigrationId(migrationId);
  p.setRequestId(requestId);
  p.setPhase(std::string(phaseName(phase)));
  p.setBytesDone(done);
  p.setBytesTotal(total);
  if (failure) {
    p.setError(failure->what());
    p.setErrorKind(errorKindToSchema(kindOf(*failure)));
  }
  post(std::move(message));
}

void AgentDaemon::fillRegister(proto::Register::Builder reg) {
  reg.setHostName(agent_.options().hostName);
  reg.setAgentVersion(kAgentVersion);
  reg.setProtocolVersion(proto::PROTOCOL_VERSION);
  try {
    reg.setCriuVersion(Runtime::criuVersion());
    reg.setRuncVersion(agent_.runtime().runcVersion());
  } catch (const std::exception& e) {
    logWarn(std::string("versions: ") + e.what());
  }
  reg.setCpuInfo(capnp::Data::Reader(reinterpret_cast<const kj::byte*>(cpuInfo_.data()), cpuInfo_.size()));
  struct utsname u;
  if (uname(&u) == 0) reg.setKernelVersion(u.release);
  reg.setDataAddress(options_.dataAddress);
  std::string signingKey = agent_.options().signingKey ? agent_.options().signingKey->publicKey() : "";
  reg.setSigningKey(capnp::Data::Reader(reinterpret_cast<const kj::byte*>(signingKey.data()), signingKey.size()));
  auto cap = reg.initCapacity();
  cap.setMemBytes(meminfoField("MemTotal"));
  cap.setCpus(static_cast<uint32_t>(sysconf(_SC_NPROCESSORS_ONLN)));
  struct statvfs vfs;
  if (statvfs(agent_.options().stateDir.c_str(), &vfs) == 0) cap.setDiskBytes(vfs.f_blocks * vfs.f_frsize);
  auto images = agent_.images().list();
  fillImages(reg.initImages(static_cast<unsigned>(images.size())), images);
  // Not waiting for a long import or export to let go of the agent: the
  // containers then follow with the next heartbeat.
  if (auto containers = agent_.listIfIdle()) {
    fillContainers(reg.initContainers(static_cast<unsigned>(containers->size())), *containers);
  }
}

void AgentDaemon::sendRegister() {
  auto message = std::make_unique<capnp::MallocMessageBuilder>();
  fillRegister(message->initRoot<proto::Message>().initRegister());
  post(std::move(message));
  logInfo("registering with the coordinator at " + options_.coordinatorEndpoint);
}

void AgentDaemon::sendHeartbeat() {
  auto message = std::make_unique<capnp::MallocMessageBuilder>();
  auto hb = message->initRoot<proto::Message>().initHeartbeat();
  // Without the containers while a long operation holds the agent: the
  // coordinator keeps what it last heard.
  if (auto containers = agent_.listIfIdle()) {
    fillContainers(hb.initContainers(static_cast<unsigned>(containers->size())), *containers);
    auto load = hb.initLoad();
    uint32_t running = 0;
    for (auto& c : *containers) running += c.state.status == ContainerStatus::Running;
    load.setRunningContainers(running);
  }
  auto load = hb.hasLoad() ? hb.getLoad() : hb.initLoad();
  double avg[1] = {0};
  if (getloadavg(avg, 1) == 1) load.setLoadAvg1(avg[0]);
  load.setMemAvailableBytes(meminfoField("MemAvailable"));
  struct statvfs vfs;
  if (statvfs(agent_.options().stateDir.c_str(), &vfs) == 0) load.setDiskAvailableBytes(vfs.f_bavail * vfs.f_frsize);
  {
    std::lock_guard lock(receiversMutex_);
    load.setActiveMigrations(static_cast<uint32_t>(receivers_.size()));
  }
  hb.setSentAt(std::chrono::duration_cast<std::chrono::nanoseconds>(
                   std::chrono::system_clock::now().time_since_epoch()).count());
  post(std::move(message));
}

// Runs `work` to fill a reply to `requestId`; a throw becomes the reply's error.
AgentDaemon::Outgoing AgentDaemon::makeReply(uint64_t requestId, const std::function<void(proto::Reply::Builder)>& work,
                                             const std::string& what) {
  auto message = std::make_unique<capnp::MallocMessageBuilder>();
  auto reply = message->initRoot<proto::Message>().initReply();
  reply.setRequestId(requestId);
  try {
    work(reply);
    reply.setOk(true);
  } catch (const std::exception& e) {
    logWarn(what + ": " + e.what());
    setReplyError(reply, e);
    reply.setNone();
  }
  return message;
}

void AgentDaemon::spawn(uint64_t requestId, std::function<void(proto::Reply::Builder)> work, std::string what) {
  workers_.start([this, requestId, work = std::move(work), what = std::move(what)] {
    post(makeReply(requestId, work, what));
  });
}

void AgentDaemon::run(const std::atomic<bool>& stop) {
  zmq::context_t context(1);
  ControlClient client(context, options_.coordinatorEndpoint, options_.keys, options_.coordinatorPublicKey);
  client.onConnected([this] { sendRegister(); });
  auto nextHeartbeat = Clock::now();
  while (!stop) {
    try {
      if (auto message = client.receive(milliseconds(50), &wakeup_)) {
        auto root = message->root();
        if (root.isRequest()) {
          dispatch(root.getRequest());
        } else if (root.isRegistered()) {
          auto r = root.getRegistered();
          options_.heartbeatInterval = milliseconds(std::max<uint32_t>(r.getHeartbeatIntervalMs(), 100));
          logInfo("registered as `" + std::string(r.getHostName().cStr()) + "`");
        }
      }
    } catch (const std::exception& e) {
      logWarn(std::string("control channel: ") + e.what());
    }
    if (Clock::now() >= nextHeartbeat) {
      sendHeartbeat();
      nextHeartbeat = Clock::now() + options_.heartbeatInterval;
    }
    std::deque<Outgoing> pending;
    {
      std::lock_guard lock(outboxMutex_);
      pending.swap(outbox_);
    }
    for (auto& m : pending) {
      try {
        client.send(*m);
      } catch (const std::exception& e) {
        logWarn(std::string("control channel: dropping a message: ") + e.what());
      }
    }
    // Finished workers only: a long transfer never holds up the loop.
    workers_.reapFinished();
  }
  logInfo("stopping; containers keep running");
}

void AgentDaemon::dispatch(proto::Request::Reader request) {
  uint64_t id = request.getRequestId();
  std::string migrationId = request.getMigrationId();
  switch (request.which()) {
    case proto::Request::RUN_CONTAINER: {
      auto r = request.getRunContainer();
      RunRequest run;
      run.name = r.getName();
      run.image = r.getImage();
      for (auto a : r.getArgs()) run.args.push_back(a);
      for (auto e : r.getEnv()) run.env.push_back(e);
      run.workingDir = r.getWorkingDir();
      run.user = r.getUser();
      run.hostUserns = r.getHostUserns();
      spawn(id, [this, run](proto::Reply::Builder reply) { fillContainer(reply.initContainer(), agent_.run(run)); },
            "run `" + run.name + "`");
      return;
    }
    case proto::Request::LIST_CONTAINERS:
      spawn(id, [this](proto::Reply::Builder reply) {
        auto list = agent_.list();
        fillContainers(reply.initContainers(static_cast<unsigned>(list.size())), list);
      }, "list");
      return;
    case proto::Request::REMOVE_CONTAINER: {
      std::string name = request.getRemoveContainer().getName();
      bool force = request.getRemoveContainer().getForce();
      spawn(id, [this, name, force](proto::Reply::Builder reply) {
        agent_.remove(name, force);
        reply.setNone();
      }, "remove `" + name + "`");
      return;
    }
    case proto::Request::STOP_CONTAINER: {
      std::string name = request.getStopContainer().getName();
      int timeout = static_cast<int>(request.getStopContainer().getTimeoutSeconds());
      spawn(id, [this, name, timeout](proto::Reply::Builder reply) {
        agent_.stop(name, timeout > 0 ? timeout : 10);
        fillContainer(reply.initContainer(), agent_.inspect(name));
      }, "stop `" + name + "`");
      return;
    }
    case proto::Request::CONTAINER_LOGS: {
      std::string name = request.getContainerLogs().getName();
      size_t tail = request.getContainerLogs().getTail();
      spawn(id, [this, name, tail](proto::Reply::Builder reply) { reply.setLogs(agent_.logs(name, tail)); },
            "logs `" + name + "`");
      return;
    }
    case proto::Request::LIST_IMAGES:
      spawn(id, [this](proto::Reply::Builder reply) {
        auto images = agent_.images().list();
        fillImages(reply.initImages(static_cast<unsigned>(images.size())), images);
      }, "images");
      return;
    case proto::Request::DESCRIBE_HOST:
      spawn(id, [this](proto::Reply::Builder reply) { fillRegister(reply.initHostInfo()); }, "describe");
      return;
    case proto::Request::PREPARE_RECEIVE:
      // Answered at once with the port; the receiver runs on its own thread.
      post(makeReply(id, [&](proto::Reply::Builder reply) { prepareReceive(id, request.getPrepareReceive(), reply); },
                     "prepare receive"));
      return;
    case proto::Request::CHECKPOINT_AND_SEND: {
      // Copy what the worker needs: the request's memory goes with this message.
      auto copy = std::make_shared<capnp::MallocMessageBuilder>();
      copy->setRoot(request.getCheckpointAndSend());
      spawn(id, [this, id, copy](proto::Reply::Builder reply) {
        checkpointAndSend(id, copy->getRoot<proto::CheckpointAndSend>().asReader(), reply);
      }, "checkpoint-and-send");
      return;
    }
    case proto::Request::RESTORE: {
      auto copy = std::make_shared<capnp::MallocMessageBuilder>();
      copy->setRoot(request.getRestore());
      spawn(id, [this, copy](proto::Reply::Builder reply) {
        restore(copy->getRoot<proto::Restore>().asReader(), reply);
      }, "restore");
      return;
    }
    case proto::Request::FINISH_POST_COPY: {
      std::string name = request.getFinishPostCopy().getContainerName();
      milliseconds timeout = request.getTimeoutMs() ? milliseconds(request.getTimeoutMs()) : std::chrono::hours(1);
      spawn(id, [this, id, name, timeout](proto::Reply::Builder reply) { finishPostCopy(id, name, timeout, reply); },
            "finish post-copy of `" + name + "`");
      return;
    }
    case proto::Request::COMMIT_SOURCE: {
      // (The target's copy keeps its migrationId until the next migration;
      // harmless: abortReceive is never sent after commit.)
      std::string name = request.getCommitSource().getContainerName();
      spawn(id, [this, name](proto::Reply::Builder reply) {
        // The new owner is on record: the source copy and its checkpoint go.
        if (agent_.findIfExists(name)) agent_.remove(name, true);
        reply.setNone();
      }, "commit `" + name + "`");
      return;
    }
    case proto::Request::ROLLBACK_SOURCE: {
      std::string name = request.getRollbackSource().getContainerName();
      spawn(id, [this, name](proto::Reply::Builder reply) { rollbackSource(name, reply); }, "rollback `" + name + "`");
      return;
    }
    case proto::Request::ABORT_RECEIVE:
      spawn(id, [this, migrationId = std::string(request.getAbortReceive().getMigrationId())](proto::Reply::Builder reply) {
        abortReceive(migrationId);
        reply.setNone();
      }, "abort receive");
      return;
    case proto::Request::CHECK_CPU_INFO: {
      std::string image(reinterpret_cast<const char*>(request.getCheckCpuInfo().getCpuInfo().begin()),
                        request.getCheckCpuInfo().getCpuInfo().size());
      spawn(id, [image](proto::Reply::Builder reply) {
        if (!image.empty()) checkCpuInfoCompatible(image);
        reply.setNone();
      }, "cpuinfo check");
      return;
    }
    case proto::Request::RECEIVE_IMAGE:
      post(makeReply(id, [&](proto::Reply::Builder reply) { receiveImage(request.getReceiveImage(), reply); },
                     "receive image"));
      return;
    case proto::Request::SEND_IMAGE: {
      auto copy = std::make_shared<capnp::MallocMessageBuilder>();
      copy->setRoot(request.getSendImage());
      spawn(id, [this, copy](proto::Reply::Builder reply) {
        sendImage(copy->getRoot<proto::SendImage>().asReader());
        reply.setNone();
      }, "send image");
      return;
    }
    default:
      spawn(id, [](proto::Reply::Builder) {
        fail(ErrorKind::Unimplemented, "this agent does not implement that request");
      }, "request");
      return;
  }
}

void AgentDaemon::prepareReceive(uint64_t requestId, proto::PrepareReceive::Reader request,
                                 proto::Reply::Builder reply) {
  reapReceiverThreads();
  auto r = std::make_shared<Receiver>();
  r->migrationId = request.getMigrationId();
  r->containerName = request.getContainerName();
  r->psk = bytesOf(request.getPsk());
  r->expectedImage = request.getExpectedManifest().getImageDigest();
  r->idMapping = idMappingFromProto(request.getExpectedManifest().getIdMapping());
  r->postCopy = request.getPostCopy();
  ErrorContext context("receive `" + r->containerName + "`");
  auto sourceKey = request.getSourceSigningKey();
  if (sourceKey.size() != kEd25519PublicKeyBytes) {
    fail(ErrorKind::InvalidInput, "bundle signature: the coordinator sent no signing key for the source host");
  }
  r->trust = BundleTrust::onlyKey(std::string(reinterpret_cast<const char*>(sourceKey.begin()), sourceKey.size()),
                                  request.getExpectedManifest().getSourceHost().cStr());
  if (agent_.findIfExists(r->containerName)) {
    fail(ErrorKind::Conflict, "a container with this name exists on " + agent_.options().hostName);
  }
  if (!r->expectedImage.empty() && !agent_.images().findIfExists(r->expectedImage)) {
    fail(ErrorKind::NotFound, "image " + r->expectedImage + " is not on " + agent_.options().hostName);
  }
  // Refused now, while the source still runs it: a mapping taken here would
  // otherwise only be found at import, after the source froze.
  if (r->idMapping) agent_.checkIdMappingAvailable(*r->idMapping, r->containerName);
  if (r->postCopy && r->idMapping) checkLazyRestoreSupported();
  milliseconds acceptTimeout = request.getAcceptTimeoutMs() ? milliseconds(request.getAcceptTimeoutMs())
                                                            : kDefaultAcceptTimeout;
  auto listener = std::make_shared<DataListener>(options_.dataAddress);
  {
    std::lock_guard lock(receiversMutex_);
    // A failed or timed-out receiver is gone already; these are live ones.
    if (receivers_.count(r->migrationId)) {
      fail(ErrorKind::Conflict, "migration " + r->migrationId + " already has a receiver waiting or receiving");
    }
    for (auto& [id, other] : receivers_) {
      if (other->containerName == r->containerName) {
        fail(ErrorKind::Conflict, "`" + r->containerName + "` is being received already, by migration " + id);
      }
      // Not a container here yet, so checkIdMappingAvailable cannot see it.
      if (r->idMapping && other->idMapping && r->idMapping->overlaps(*other->idMapping)) {
        refuseOverlap(*r->idMapping, r->containerName, *other->idMapping, other->containerName,
                      ", being received by migration " + id);
      }
    }
    receivers_[r->migrationId] = r;
  }
  try {
    launchReceiverThread(r, [this, r, listener, acceptTimeout, requestId]() mutable {
      receiveBundle(r, std::move(listener), acceptTimeout, requestId);
    });
  } catch (const std::exception& e) {
    endReceiver(r, e.what());
    throw;
  }
  reply.setPort(listener->port());
}

// The receive thread: the sender, the bundle, the digest back; for post-copy
// then the page channel. Any failure, the deadline included, ends the
// receiver at once; the coordinator hears it at once too.
void AgentDaemon::receiveBundle(const std::shared_ptr<Receiver>& r, std::shared_ptr<DataListener> listener,
                                milliseconds acceptTimeout, uint64_t requestId) {
  try {
    // Any host on the fabric can reach this port: the first connection that
    // proves the key is the sender, strangers are dropped (acceptTls).
    auto tls = listener->acceptTls(r->migrationId, r->psk, acceptTimeout, r->stop);
    if (!r->postCopy) listener.reset();  // one stream only: later connections are refused
    TlsInputStream in(tls);
    CountingInputStream counted(in);
    std::string sha;
    ImportRequest importRequest;
    importRequest.migrationId = r->migrationId;
    importRequest.trust = r->trust;
    auto c = agent_.importCheckpoint(counted, importRequest, [&](const nlohmann::json& manifest) {
      if (manifest.value("containerName", "") != r->containerName) {
        fail(ErrorKind::InvalidInput, "bundle is for `" + manifest.value("containerName", "") + "`, expected `" +
                                          r->containerName + "`");
      }
      if (!r->expectedImage.empty() && manifest.value("imageDigest", "") != r->expectedImage) {
        fail(ErrorKind::InvalidInput, "bundle's image " + manifest.value("imageDigest", "") + " is not " +
                                          r->expectedImage);
      }
      if (auto bundleMapping = manifestIdMapping(manifest); bundleMapping != r->idMapping) {
        fail(ErrorKind::InvalidInput, "bundle's user namespace mapping " + idMappingText(bundleMapping) + " is not " +
                                          idMappingText(r->idMapping) + ", the one the source reported");
      }
      postProgress(r->migrationId, requestId, Phase::Receive, counted.count(), 0);
    }, &sha);
    // Acknowledge the last byte with the digest we computed; the sender
    // compares it with its own before reporting success.
    tls.write(sha.data(), sha.size());
    tls.shutdownWrite();
    std::optional<TlsStream> pages;
    if (r->postCopy) {
      // Post-copy: the sender's second connection carries the pages.
      pages.emplace(listener->acceptTls(r->migrationId, r->psk, acceptTimeout, r->stop));
      listener.reset();
    }
    {
      std::lock_guard lock(r->mutex);
      r->sha256 = sha;
      r->containerId = c.config.id;
      r->pageStream = std::move(pages);
    }
    // The lazy-pages daemon starts now rather than at restore: its start-up
    // is then not part of the downtime.
    if (r->postCopy) startPostCopyTarget(r);
  } catch (const std::exception& e) {
    // Tell the coordinator at once: the sender only sees a broken pipe.
    if (!r->stop) postProgress(r->migrationId, requestId, Phase::Receive, 0, 0, &e);
    logWarn("migration " + r->migrationId + ": receive `" + r->containerName + "`: " + e.what());
    {
      std::lock_guard lock(r->mutex);
      r->error = std::current_exception();
      r->done = true;
      r->cv.notify_all();
    }
    endReceiver(r, e.what());
    return;
  }
  std::lock_guard lock(r->mutex);
  r->done = true;
  r->cv.notify_all();
}

void AgentDaemon::checkpointAndSend(uint64_t requestId, proto::CheckpointAndSend::Reader request,
                                    proto::Reply::Builder reply) {
  std::string name = request.getContainerName();
  std::string migrationId = request.getMigrationId();
  ErrorContext context("migration " + migrationId + ": checkpoint and send `" + name + "`");
  auto psk = bytesOf(request.getPsk());

  // Connect before freezing: an unreachable target must not cost downtime.
  auto start = Clock::now();
  Fd sock = connectTcp(request.getTargetAddress(), request.getTargetPort(), milliseconds(10000));
  auto tls = TlsStream::connect(std::move(sock), migrationId, psk);
  uint64_t connectNs = nanosSince(start);

  postProgress(migrationId, requestId, Phase::Checkpoint, 0, 0);
  start = Clock::now();
  PhaseTimes times;
  std::shared_ptr<PostCopySource> postCopy;
  if (request.getPostCopy()) {
    if (request.getLeaveRunning()) fail(ErrorKind::InvalidInput, "post-copy cannot leave the source running");
    postCopy = std::make_shared<PostCopySource>();
    postCopy->migrationId = migrationId;
    postCopy->containerName = name;
    // A free loopback port for CRIU's page server: bound here, released at
    // once, taken by CRIU right after.
    uint16_t pageServerPort = DataListener("127.0.0.1").port();
    postCopy->dump.emplace(agent_.startLazyCheckpoint(name, CheckpointRequest{request.getTcpEstablished(), false},
                                                      pageServerPort, &times));
  } else {
    agent_.checkpoint(name, CheckpointRequest{request.getTcpEstablished(), request.getLeaveRunning()}, &times);
  }
  uint64_t checkpointNs = nanosSince(start);
  try {
    sendCheckpoint(requestId, request, tls, checkpointNs, connectNs, postCopy, reply);
  } catch (...) {
    if (postCopy) {
      // Nothing of it runs anywhere else yet: CRIU resumes the container here.
      try {
        agent_.abortLazyCheckpoint(name, *postCopy->dump, Fd());
      } catch (const std::exception& e) {
        logError("post-copy of `" + name + "` abandoned before its pages went: " + e.what());
      }
    }
    throw;
  }
}

void AgentDaemon::sendCheckpoint(uint64_t requestId, proto::CheckpointAndSend::Reader request, TlsStream& tls,
                                 uint64_t checkpointNs, uint64_t connectNs,
                                 const std::shared_ptr<PostCopySource>& postCopy, proto::Reply::Builder reply) {
  std::string name = request.getContainerName();
  std::string migrationId = request.getMigrationId();
  auto container = agent_.inspect(name);
  uint64_t total = treeSize(container.paths.checkpoint()) + treeSize(container.paths.upper());

  auto start = Clock::now();
  TlsOutputStream out(tls);
  ExportOptions exportOptions;
  exportOptions.zstdLevel = options_.zstdLevel;
  exportOptions.zstdThreads = options_.zstdThreads;
  if (request.getCompressionLevel() != 0) exportOptions.zstdLevel = request.getCompressionLevel();
  if (request.getCompressionThreads() != 0) exportOptions.zstdThreads = static_cast<int>(request.getCompressionThreads());
  auto lastProgress = Clock::now();
  exportOptions.onProgress = [&](uint64_t bytesIn) {
    if (Clock::now() - lastProgress < milliseconds(100)) return;
    lastProgress = Clock::now();
    postProgress(migrationId, requestId, Phase::Stream, bytesIn, total);
  };
  auto stats = agent_.exportCheckpoint(name, out, exportOptions);
  out.finish();
  // The receiver answers with the digest of what it unpacked: our proof that
  // every byte arrived and went through its hostile-input checks.
  std::string theirs(64, '\0');
  size_t got = 0;
  while (got < theirs.size()) {
    size_t n = tls.read(theirs.data() + got, theirs.size() - got);
    if (n == 0) fail(ErrorKind::Disconnected, "target closed the stream without acknowledging it");
    got += n;
  }
  if (theirs != stats.sha256) {
    fail(ErrorKind::Failed, "target received a stream with SHA-256 " + theirs + ", sent " + stats.sha256);
  }
  postProgress(migrationId, requestId, Phase::Stream, stats.bytesRaw, total);
  uint64_t streamNs = nanosSince(start);

  if (postCopy) {
    // The page channel: a second connection to the same receiver, pumped to
    // CRIU's page server until the target has every page.
    postCopy->pageStream.emplace(TlsStream::connect(
        connectTcp(request.getTargetAddress(), request.getTargetPort(), milliseconds(10000)), migrationId,
        bytesOf(request.getPsk())));
    postCopy->criuSocket = connectTcp("127.0.0.1", postCopy->dump->pageServerPort, milliseconds(5000));
    {
      std::lock_guard lock(postCopiesMutex_);
      if (postCopies_.count(name)) fail(ErrorKind::Conflict, "`" + name + "` is already serving its pages");
      postCopies_[name] = postCopy;
    }
    postCopy->started = Clock::now();
    postCopy->thread = std::thread([this, postCopy] { servePages(postCopy); });
  }

  auto s = reply.initStats();
  // CRIU's own account of the freeze (a lazy dump writes it only at its end).
  if (auto criu = readCriuDumpStats(container.paths.criuWork() / "stats-dump"); criu && !postCopy) {
    auto get = [&](const char* key) { return criu->count(key) ? criu->at(key) : 0; };
    s.setFreezingNs(get("freezingTime"));
    s.setFrozenNs(get("frozenTime"));
    s.setMemdumpNs(get("memdumpTime"));
    s.setMemwriteNs(get("memwriteTime"));
    s.setPagesScanned(get("pagesScanned"));
    s.setPagesWritten(get("pagesWritten"));
  }
  s.setCheckpointNs(checkpointNs);
  s.setStreamNs(streamNs);
  s.setBytesRaw(stats.bytesRaw);
  s.setBytesWire(stats.bytesCompressed);
  s.setSha256(stats.sha256);
  auto phases = s.initPhases(3);
  phases[0].setPhase("connect");
  phases[0].setNanos(connectNs);
  phases[1].setPhase("checkpoint");
  phases[1].setNanos(checkpointNs);
  phases[2].setPhase("stream");
  phases[2].setNanos(s.getStreamNs());
}

void AgentDaemon::servePages(const std::shared_ptr<PostCopySource>& p) {
  std::exception_ptr pumpError;
  try {
    pumpTls(*p->pageStream, p->criuSocket.get(), p->stop, &p->counters);
    if (p->stop) fail(ErrorKind::Failed, "page channel stopped");
  } catch (...) {
    pumpError = std::current_exception();
  }
  if (!pumpError) {
    // The target's lazy-pages daemon said goodbye: every page went. CRIU
    // finishes, and the frozen container here is gone.
    p->criuSocket.reset();
    std::exception_ptr error;
    try {
      agent_.finishLazyCheckpoint(p->containerName, *p->dump);
    } catch (...) {
      error = std::current_exception();
    }
    std::lock_guard lock(p->mutex);
    p->pagesNs = nanosSince(p->started);
    p->error = error;
    p->pagesDone = p->finished = true;
    p->cv.notify_all();
    return;
  }
  // A cut channel: the target may already run the container, with part of
  // its memory. Stay frozen until the coordinator, having made the target
  // drop its copy, asks for this one back (rollbackSource).
  std::unique_lock lock(p->mutex);
  p->pagesNs = nanosSince(p->started);
  p->error = pumpError;
  p->pagesDone = true;
  p->cv.notify_all();
  p->cv.wait(lock, [&] { return p->resume; });
  lock.unlock();
  p->pageStream.reset();
  try {
    agent_.abortLazyCheckpoint(p->containerName, *p->dump, std::move(p->criuSocket));
  } catch (const std::exception& e) {
    logError("post-copy of `" + p->containerName + "`: giving the container back failed: " + e.what());
  }
  lock.lock();
  p->finished = true;
  p->cv.notify_all();
}

std::shared_ptr<AgentDaemon::PostCopySource> AgentDaemon::postCopyFor(const std::string& name) {
  std::lock_guard lock(postCopiesMutex_);
  auto it = postCopies_.find(name);
  return it == postCopies_.end() ? nullptr : it->second;
}

void AgentDaemon::finishPostCopy(uint64_t requestId, const std::string& name, milliseconds timeout,
                                 proto::Reply::Builder reply) {
  ErrorContext context("post-copy of `" + name + "`");
  auto p = postCopyFor(name);
  if (!p) {
    // Asked again after this agent restarted: a post-copy that completed
    // left the container `checkpointed` here (its processes gone with the
    // last page); one that did not left it running.
    auto c = agent_.findIfExists(name);
    if (c && c->state.status == ContainerStatus::Checkpointed) {
      reply.initStats();
      return;
    }
    fail(ErrorKind::NotFound, "no post-copy of `" + name + "` on " + agent_.options().hostName);
  }
  uint64_t total = 0;
  try {
    total = agent_.residentBytes(name);  // the frozen processes' memory: what has to go
  } catch (const std::exception&) {
    // Gone already (every page went): no total to show.
  }
  {
    auto deadline = Clock::now() + timeout;
    std::unique_lock lock(p->mutex);
    while (!p->cv.wait_for(lock, milliseconds(200), [&] { return p->finished || (p->pagesDone && p->error); })) {
      if (Clock::now() > deadline) {
        fail(ErrorKind::Disconnected, "pages still flowing after " + std::to_string(timeout.count() / 1000) + " s");
      }
      postProgress(p->migrationId, requestId, Phase::Pages, p->counters.toTls, std::max(total, p->counters.toTls.load()));
    }
    // A failure stays on record for rollbackSource, which resumes the
    // container. Reported as `failed`, never `disconnected`: that kind is the
    // coordinator's cue that this agent is away and the question is to be
    // asked again.
    if (p->error) {
      try {
        std::rethrow_exception(p->error);
      } catch (const std::exception& e) {
        fail(ErrorKind::Failed, std::string("page transfer failed: ") + e.what());
      }
    }
  }
  p->join();
  {
    std::lock_guard lock(postCopiesMutex_);
    postCopies_.erase(name);
  }
  auto s = reply.initStats();
  s.setPagesNs(p->pagesNs);
  s.setBytesPages(p->counters.toTls);
  logInfo("post-copy of `" + name + "`: " + std::to_string(p->counters.toTls >> 20) + " MiB of pages in " +
          std::to_string(p->pagesNs / 1000000) + " ms");
}

void AgentDaemon::startPostCopyTarget(const std::shared_ptr<Receiver>& r) {
  if (!r->pageStream) fail(ErrorKind::Disconnected, "no page channel arrived from the source");
  // The lazy-pages daemon speaks plain TCP; it gets a loopback port whose
  // one connection we pump through the TLS page channel.
  auto local = std::make_shared<DataListener>("127.0.0.1");
  r->lazyPages.emplace(agent_.startLazyPages(r->containerId, local->port()));
  launchReceiverThread(r, [this, r, local] {
    std::optional<int> daemonStatus;
    auto daemonExit = [&] {
      if (!daemonStatus) daemonStatus = r->lazyPages->wait();
      return *daemonStatus;
    };
    std::string failure;
    try {
      // Until restore makes the daemon connect (abortReceive stops us sooner).
      Fd conn = local->acceptOne(std::chrono::minutes(10), r->stop);
      // The daemon's end of file is a clean end only if it exited 0 (all
      // pages in); otherwise the source must see a cut stream, not a close.
      pumpTls(*r->pageStream, conn.get(), r->stop, &r->pageCounters, [&] { return daemonExit() == 0; });
      if (r->stop) fail("stopped");
      if (daemonExit() != 0) fail("criu lazy-pages exited with status " + std::to_string(daemonExit()));
      logInfo("post-copy of `" + r->containerName + "` complete: " +
              std::to_string(r->pageCounters.fromTls >> 20) + " MiB of pages received");
    } catch (const std::exception& e) {
      // This thread's own stream: cut, never a clean close.
      if (r->pageStream) ::shutdown(r->pageStream->fd(), SHUT_RDWR);
      if (!daemonStatus) {
        r->lazyPages->kill(SIGKILL);
        daemonExit();
      }
      failure = std::string("page channel failed: ") + e.what();
      logError("post-copy of `" + r->containerName + "`: " + failure);
    }
    try {
      if (agent_.findIfExists(r->containerId)) agent_.releaseCheckpoint(r->containerId);
    } catch (const std::exception& e) {
      logWarn("post-copy of `" + r->containerName + "`: " + e.what());
    }
    endReceiver(r, failure);
  });
}

std::shared_ptr<AgentDaemon::Receiver> AgentDaemon::receiverFor(const std::string& migrationId) {
  std::lock_guard lock(receiversMutex_);
  auto it = receivers_.find(migrationId);
  if (it != receivers_.end()) return it->second;
  for (auto ended = endedReceivers_.rbegin(); ended != endedReceivers_.rend(); ++ended) {
    if (ended->migrationId == migrationId) {
      fail(ErrorKind::Failed, "the receiver for migration " + migrationId + " on " + agent_.options().hostName +
                                  " has ended: " + ended->reason);
    }
  }
  fail(ErrorKind::NotFound, "no receiver for migration " + migrationId + " on " + agent_.options().hostName);
}

void AgentDaemon::endReceiver(const std::shared_ptr<Receiver>& r, const std::string& failure) {
  std::lock_guard lock(receiversMutex_);
  auto it = receivers_.find(r->migrationId);
  if (it != receivers_.end() && it->second == r) receivers_.erase(it);
  if (failure.empty()) return;
  endedReceivers_.push_back(EndedReceiver{r->migrationId, failure});
  if (endedReceivers_.size() > kEndedReceiversKept) endedReceivers_.pop_front();
}

void AgentDaemon::launchReceiverThread(const std::shared_ptr<Receiver>& r, std::function<void()> body) {
  std::lock_guard lock(receiversMutex_);
  // The destructor took the threads to join already: one started now would
  // never be joined.
  if (stopping_) fail(ErrorKind::Failed, "the agent is stopping");
  uint64_t key = nextReceiverThread_++;
  {
    std::lock_guard rlock(r->mutex);
    ++r->threads;
  }
  try {
    receiverThreads_.emplace(key, std::thread([this, r, key, body = std::move(body)] {
      try {
        body();
      } catch (const std::exception& e) {
        logError("migration " + r->migrationId + ": receiver thread: " + e.what());
      }
      {
        std::lock_guard rlock(r->mutex);
        --r->threads;
        r->cv.notify_all();
      }
      std::lock_guard lock(receiversMutex_);
      finishedReceiverThreads_.push_back(key);
    }));
  } catch (...) {
    std::lock_guard rlock(r->mutex);
    --r->threads;
    throw;
  }
}

void AgentDaemon::reapReceiverThreads() {
  std::vector<std::thread> done;
  {
    std::lock_guard lock(receiversMutex_);
    for (uint64_t key : finishedReceiverThreads_) {
      auto it = receiverThreads_.find(key);
      if (it == receiverThreads_.end()) continue;
      done.push_back(std::move(it->second));
      receiverThreads_.erase(it);
    }
    finishedReceiverThreads_.clear();
  }
  // Each has returned from its body already: these joins do not wait.
  for (auto& t : done) t.join();
}

void AgentDaemon::restore(proto::Restore::Reader request, proto::Reply::Builder reply) {
  std::string migrationId = request.getMigrationId();
  ErrorContext context("migration " + migrationId + ": restore");
  auto r = receiverFor(migrationId);
  r->wait(kRestoreWaitForBundle);
  std::string expected = request.getExpectedSha256();
  if (!expected.empty() && expected != r->sha256) {
    fail(ErrorKind::InvalidInput, "received bundle has SHA-256 " + r->sha256 + ", the source sent " + expected);
  }
  auto start = Clock::now();
  PhaseTimes times;
  bool postCopy = request.getPostCopy();
  if (postCopy && !r->lazyPages) fail(ErrorKind::InvalidInput, "this receiver was not prepared for post-copy");
  RestoreRequest restoreRequest{request.getTcpEstablished(), false, false, false, postCopy};
  Container c;
  try {
    c = agent_.restore(r->containerId, restoreRequest, &times);
  } catch (...) {
    // Post-copy: the page thread stops and kills its lazy-pages daemon.
    if (postCopy) r->stop = true;
    throw;
  }
  // CRIU's part of the restore, beside ours (phases "criu-forking", "criu-restore").
  if (auto criu = readCriuRestoreStats(c.paths.criuWork() / "stats-restore")) {
    for (auto [key, phase] : {std::pair{"forkingTime", "criu-forking"}, std::pair{"restoreTime", "criu-restore"}}) {
      if (criu->count(key)) times.add(phase, static_cast<double>(criu->at(key)) / 1e9);
    }
  }
  auto result = reply.initRestored();
  fillContainer(result.initContainer(), c);
  auto stats = result.initStats();
  stats.setRestoreNs(nanosSince(start));
  stats.setSha256(r->sha256);
  auto phases = stats.initPhases(static_cast<unsigned>(times.seconds.size()));
  for (size_t i = 0; i < times.seconds.size(); ++i) {
    phases[static_cast<unsigned>(i)].setPhase(times.seconds[i].first);
    phases[static_cast<unsigned>(i)].setNanos(static_cast<uint64_t>(times.seconds[i].second * 1e9));
  }
  if (postCopy) return;  // the page thread lets go of the receiver after the last page
  endReceiver(r, "");
}

void AgentDaemon::abortReceive(const std::string& migrationId) {
  std::shared_ptr<Receiver> r;
  {
    std::lock_guard lock(receiversMutex_);
    auto it = receivers_.find(migrationId);
    if (it != receivers_.end()) r = it->second;
  }
  if (r) {
    r->stop = true;
    // Its threads end by themselves (nothing here touches their sockets);
    // what they imported is removed below, so wait for them. The
    // coordinator asks again if this fails.
    if (!r->waitStopped(kReceiverStopWait)) {
      fail(ErrorKind::Failed, "the receiver for migration " + migrationId + " did not stop within " +
                                  std::to_string(kReceiverStopWait.count() / 1000) + " s");
    }
    endReceiver(r, "aborted by the coordinator");
  }
  // Whatever arrived or was restored here for this migration goes: the
  // source runs it again. Found by migration id, so this works also after
  // the agent restarted and lost its receiver; an import that died midway
  // (its staging dir and tmpfs) goes too.
  for (auto& c : agent_.list()) {
    if (c.state.migrationId == migrationId) agent_.remove(c.config.id, true);
  }
  agent_.removeStaleImports();
  logInfo("aborted receive of migration " + migrationId);
}

void AgentDaemon::rollbackSource(const std::string& name, proto::Reply::Builder reply) {
  if (auto p = postCopyFor(name)) {
    // Mid post-copy: CRIU resumes the frozen container (servePages).
    p->stop = true;
    {
      std::lock_guard lock(p->mutex);
      p->resume = true;
      p->cv.notify_all();
    }
    p->join();
    std::lock_guard lock(postCopiesMutex_);
    postCopies_.erase(name);
  }
  auto c = agent_.inspect(name);
  if (c.state.status == ContainerStatus::Checkpointed) {
    // Still frozen in its checkpoint here: bring it back from there.
    c = agent_.restore(name, RestoreRequest{c.state.checkpointTcpEstablished, false, false, true});
    logInfo("rolled back `" + name + "`: running on this host again");
  }
  fillContainer(reply.initContainer(), c);
}

void AgentDaemon::receiveImage(proto::ReceiveImage::Reader request, proto::Reply::Builder reply) {
  auto listener = std::make_shared<DataListener>(options_.dataAddress);
  reply.setPort(listener->port());
  std::string digest = request.getDigest();
  std::string identity = request.getPskIdentity();
  auto psk = bytesOf(request.getPsk());
  milliseconds timeout = request.getAcceptTimeoutMs() ? milliseconds(request.getAcceptTimeoutMs()) : kDefaultAcceptTimeout;
  workers_.start([this, listener, digest, identity, psk, timeout] {
    try {
      // Strangers are dropped as for a migration's receiver; shutdown stops
      // the wait (and the stream) at once.
      auto tls = listener->acceptTls(identity, psk, timeout, stopping_);
      TlsInputStream in(tls);
      auto info = agent_.images().importExported(in);
      if (!digest.empty() && info.digest != digest) {
        fail(ErrorKind::InvalidInput, "received image " + info.digest + ", expected " + digest);
      }
      tls.write("ok", 2);
      tls.shutdownWrite();
      logInfo("received image " + info.digest);
    } catch (const std::exception& e) {
      logWarn(std::string("receive image: ") + e.what());
    }
  });
}

void AgentDaemon::sendImage(proto::SendImage::Reader request) {
  auto image = agent_.images().find(request.getImage().cStr());
  auto psk = bytesOf(request.getPsk());
  Fd sock = connectTcp(request.getTargetAddress(), request.getTargetPort(), milliseconds(10000));
  auto tls = TlsStream::connect(std::move(sock), request.getPskIdentity(), psk);
  TlsOutputStream out(tls);
  agent_.images().exportImage(image.digest, out);
  out.finish();
  char ack[2];
  size_t got = 0;
  while (got < 2) {
    size_t n = tls.read(ack + got, 2 - got);
    if (n == 0) fail(ErrorKind::Failed, "target refused image " + image.digest + " (see its agent log)");
    got += n;
  }
}

}  // namespace migrate
