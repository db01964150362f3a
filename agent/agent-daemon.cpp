#include "agent/agent-daemon.h"

#include <sys/utsname.h>
#include <unistd.h>

#include <optional>

#include "agent/capacity.h"
#include "agent/checkpoint-sender.h"
#include "agent/criu-cpuinfo.h"
#include "agent/id-mapping-proto.h"
#include "agent/image-transfer.h"
#include "common/error.h"
#include "common/files.h"
#include "common/log.h"
#include "net/data-listener.h"
#include "net/tls-stream.h"

namespace migrate {

namespace fs = std::filesystem;

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
// How long rollbackSource waits for a cancelled send of its container to end.
constexpr std::chrono::seconds kSendStopWait{120};

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

}  // namespace

AgentDaemon::AgentDaemon(Agent& agent, DaemonOptions options)
    : agent_(agent), options_(std::move(options)), receivers_(agent.options().hostName) {
  agent_.removeStaleImports();
  adoptTargetRelays();
  try {
    cpuInfo_ = dumpCpuInfo();
  } catch (const std::exception& e) {
    logWarn(std::string("criu cpuinfo dump failed; prechecks will not compare CPUs: ") + e.what());
  }
}

AgentDaemon::~AgentDaemon() {
  // Shutting down mid post-copy: the page relays and CRIU go on without us
  // (the target runs the container and needs every page); the next run of
  // this agent answers for them (PageRelayHandle::open).
  std::map<std::string, std::shared_ptr<PostCopySource>> postCopies;
  {
    std::lock_guard lock(postCopiesMutex_);
    postCopies.swap(postCopies_);
  }
  for (auto& [name, p] : postCopies) p->leave();
  // Receivers stop where they are: waiting for a sender, reading a bundle or
  // pumping pages (an import in progress cleans up after itself). So do
  // image receives and checkpoint sends in progress, among the workers.
  {
    std::lock_guard lock(sendsMutex_);
    stopping_ = true;
    for (auto& [id, send] : sends_) *send.cancelled = true;
  }
  receivers_.stopAll();
  workers_.joinAll();
}

// Post-copy targets an earlier run of this agent left mid-transfer: their
// relays went on; follow each to its end as the receiver would have.
void AgentDaemon::adoptTargetRelays() {
  std::error_code ec;
  for (auto& entry : fs::directory_iterator(agent_.options().stateDir / "relays", ec)) {
    std::string migrationId = entry.path().filename();
    try {
      auto relay = PageRelayHandle::open(agent_.options().stateDir, migrationId);
      if (!relay) continue;
      auto spec = readRelaySpec(relay->dir());
      if (spec.role != RelayRole::Target) continue;
      logInfo("migration " + migrationId + ": following the page relay (pid " + std::to_string(relay->pid()) +
              ") of `" + spec.containerName + "` that an earlier run started");
      workers_.start([this, relay = *relay, name = spec.containerName] {
        UserfaultfdCopies copies;
        followTargetRelay(agent_, relay, name, name, stopping_, copies);
      });
    } catch (const std::exception& e) {
      logWarn("migration " + migrationId + ": page relay: " + e.what());
    }
  }
}

void AgentDaemon::post(Outgoing message) {
  {
    std::lock_guard lock(outboxMutex_);
    outbox_.push_back(std::move(message));
  }
  wakeup_.notify();
}

void AgentDaemon::postProgress(const ProgressReport& report) {
  auto message = std::make_unique<capnp::MallocMessageBuilder>();
  auto p = message->initRoot<proto::Message>().initProgress();
  p.setMigrationId(report.migrationId);
  p.setRequestId(report.requestId);
  p.setPhase(std::string(phaseName(report.phase)));
  p.setBytesDone(report.done);
  p.setBytesTotal(report.total);
  if (report.failure) {
    p.setError(report.failure->what());
    p.setErrorKind(errorKindToSchema(kindOf(*report.failure)));
  }
  post(std::move(message));
}

ReportProgress AgentDaemon::progressReporter() {
  return [this](const ProgressReport& report) { postProgress(report); };
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
  try {
    auto host = HostCapacity::measure(agent_.options().stateDir);
    cap.setMemBytes(host.memTotal);
    cap.setCpus(host.cpus);
    cap.setDiskBytes(host.diskTotal);
  } catch (const std::exception& e) {
    logWarn(std::string("capacity: ") + e.what());
  }
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
  try {
    auto host = HostCapacity::measure(agent_.options().stateDir);
    load.setLoadAvg1(host.loadAvg1);
    load.setMemAvailableBytes(host.memAvailable);
    load.setDiskAvailableBytes(host.diskAvailable);
  } catch (const std::exception& e) {
    logWarn(std::string("load: ") + e.what());
  }
  load.setActiveMigrations(static_cast<uint32_t>(receivers_.liveCount()));
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
    // Finished ones only: a long transfer never holds up the loop.
    workers_.reapFinished();
    receivers_.reap();
  }
  logInfo("stopping; containers keep running");
}

// A copy of a request's payload for a worker: the request's memory goes with
// the message it came in.
template <typename Reader>
std::shared_ptr<capnp::MallocMessageBuilder> copyOf(Reader payload) {
  auto copy = std::make_shared<capnp::MallocMessageBuilder>();
  copy->setRoot(payload);
  return copy;
}

void AgentDaemon::dispatch(proto::Request::Reader request) {
  uint64_t id = request.getRequestId();
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
    case proto::Request::PREPARE_RECEIVE: {
      // Answered with the port once the checks passed (they read the
      // agent's records, which a long import may hold); the receiver then
      // runs on its own thread.
      auto copy = copyOf(request.getPrepareReceive());
      spawn(id, [this, id, copy](proto::Reply::Builder reply) {
        prepareReceive(id, copy->getRoot<proto::PrepareReceive>().asReader(), reply);
      }, "prepare receive");
      return;
    }
    case proto::Request::CHECKPOINT_AND_SEND: {
      auto copy = copyOf(request.getCheckpointAndSend());
      auto cancelled = registerSend(id, request.getCheckpointAndSend().getContainerName());
      spawn(id, [this, id, copy, cancelled](proto::Reply::Builder reply) {
        struct Forget {
          AgentDaemon& self;
          uint64_t id;
          ~Forget() { self.forgetSend(id); }
        } forget{*this, id};
        checkpointAndSend(id, copy->getRoot<proto::CheckpointAndSend>().asReader(), *cancelled, reply);
      }, "checkpoint-and-send");
      return;
    }
    case proto::Request::CANCEL:
      // On the loop itself: it only sets a flag.
      post(makeReply(id, [&](proto::Reply::Builder reply) {
        cancel(request.getCancel().getRequestId());
        reply.setNone();
      }, "cancel"));
      return;
    case proto::Request::RESTORE: {
      auto copy = copyOf(request.getRestore());
      spawn(id, [this, copy](proto::Reply::Builder reply) {
        restore(copy->getRoot<proto::Restore>().asReader(), reply);
      }, "restore");
      return;
    }
    case proto::Request::FINISH_POST_COPY: {
      std::string name = request.getFinishPostCopy().getContainerName();
      std::string migrationId = request.getFinishPostCopy().getMigrationId();
      milliseconds timeout = request.getTimeoutMs() ? milliseconds(request.getTimeoutMs()) : std::chrono::hours(1);
      spawn(id, [this, id, migrationId, name, timeout](proto::Reply::Builder reply) {
        finishPostCopy(id, migrationId, name, timeout, reply);
      }, "finish post-copy of `" + name + "`");
      return;
    }
    case proto::Request::MEASURE_CHECKPOINT: {
      std::string name = request.getMeasureCheckpoint().getContainerName();
      spawn(id, [this, name](proto::Reply::Builder reply) {
        auto size = agent_.measureCheckpoint(name);
        auto out = reply.initCheckpointSize();
        out.setMemoryBytes(size.memoryBytes);
        out.setRootfsDiffBytes(size.rootfsDiffBytes);
        out.setRootfsDiffEntries(size.rootfsDiffEntries);
        out.setPostCopyRefusal(size.postCopyRefusal);
      }, "measure `" + name + "`");
      return;
    }
    case proto::Request::POST_COPY_STATUS: {
      std::string migrationId = request.getPostCopyStatus().getMigrationId();
      spawn(id, [this, migrationId](proto::Reply::Builder reply) {
        fillPostCopyStatus(reply.initPostCopy(), PageRelayHandle::open(agent_.options().stateDir, migrationId));
      }, "post-copy status of migration " + migrationId);
      return;
    }
    case proto::Request::RESUME_POST_COPY: {
      std::string migrationId = request.getResumePostCopy().getMigrationId();
      auto psk = bytesOf(request.getResumePostCopy().getPsk());
      spawn(id, [this, migrationId, psk](proto::Reply::Builder reply) {
        auto relay = PageRelayHandle::open(agent_.options().stateDir, migrationId);
        if (!relay) fail(ErrorKind::NotFound, "no page relay for migration " + migrationId + " on " +
                                                  agent_.options().hostName);
        relay->rekey(psk);
        logInfo("migration " + migrationId + ": the page relay has a fresh key");
        fillPostCopyStatus(reply.initPostCopy(), relay);
      }, "resume post-copy of migration " + migrationId);
      return;
    }
    case proto::Request::COMMIT_SOURCE: {
      // (The target's copy keeps its migrationId until the next migration;
      // harmless: abortReceive is never sent after commit.)
      std::string name = request.getCommitSource().getContainerName();
      std::string migrationId = request.getCommitSource().getMigrationId();
      spawn(id, [this, name, migrationId](proto::Reply::Builder reply) {
        // The new owner is on record: the source copy and its checkpoint go,
        // and a post-copy's relay record.
        if (agent_.findIfExists(name)) agent_.remove(name, true);
        if (auto relay = PageRelayHandle::open(agent_.options().stateDir, migrationId)) {
          relay->stop();
          relay->remove();
        }
        reply.setNone();
      }, "commit `" + name + "`");
      return;
    }
    case proto::Request::ROLLBACK_SOURCE: {
      std::string name = request.getRollbackSource().getContainerName();
      std::string migrationId = request.getRollbackSource().getMigrationId();
      spawn(id, [this, name, migrationId](proto::Reply::Builder reply) { rollbackSource(name, migrationId, reply); },
            "rollback `" + name + "`");
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
    case proto::Request::RECEIVE_IMAGE: {
      auto copy = copyOf(request.getReceiveImage());
      spawn(id, [this, copy](proto::Reply::Builder reply) {
        receiveImage(copy->getRoot<proto::ReceiveImage>().asReader(), reply);
      }, "receive image");
      return;
    }
    case proto::Request::SEND_IMAGE: {
      auto copy = copyOf(request.getSendImage());
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
  ReceiverSpec spec;
  spec.migrationId = request.getMigrationId();
  spec.requestId = requestId;
  spec.containerName = request.getContainerName();
  spec.psk = bytesOf(request.getPsk());
  spec.expectedImage = request.getExpectedManifest().getImageDigest();
  spec.idMapping = idMappingFromProto(request.getExpectedManifest().getIdMapping());
  spec.postCopy = request.getPostCopy();
  spec.acceptTimeout = request.getAcceptTimeoutMs() ? milliseconds(request.getAcceptTimeoutMs()) : kDefaultAcceptTimeout;
  ErrorContext context("receive `" + spec.containerName + "`");
  auto sourceKey = request.getSourceSigningKey();
  if (sourceKey.size() != kEd25519PublicKeyBytes) {
    fail(ErrorKind::InvalidInput, "bundle signature: the coordinator sent no signing key for the source host");
  }
  spec.trust = BundleTrust::onlyKey(std::string(reinterpret_cast<const char*>(sourceKey.begin()), sourceKey.size()),
                                    request.getExpectedManifest().getSourceHost().cStr());
  if (agent_.findIfExists(spec.containerName)) {
    fail(ErrorKind::Conflict, "a container with this name exists on " + agent_.options().hostName);
  }
  if (!spec.expectedImage.empty() && !agent_.images().findIfExists(spec.expectedImage)) {
    fail(ErrorKind::NotFound, "image " + spec.expectedImage + " is not on " + agent_.options().hostName);
  }
  // Refused now, while the source still runs it: a mapping taken here would
  // otherwise only be found at import, after the source froze.
  if (spec.idMapping) agent_.checkIdMappingAvailable(*spec.idMapping, spec.containerName);
  if (spec.postCopy && spec.idMapping) checkLazyRestoreSupported();
  auto r = receivers_.create(agent_, std::move(spec), progressReporter());
  try {
    reply.setPort(r->start(options_.dataAddress));
  } catch (const std::exception& e) {
    r->end(e.what());
    throw;
  }
}

void AgentDaemon::checkpointAndSend(uint64_t requestId, proto::CheckpointAndSend::Reader request,
                                    const std::atomic<bool>& cancelled, proto::Reply::Builder reply) {
  SendSpec spec;
  spec.migrationId = request.getMigrationId();
  spec.requestId = requestId;
  spec.containerName = request.getContainerName();
  spec.psk = bytesOf(request.getPsk());
  spec.targetAddress = request.getTargetAddress();
  spec.targetPort = request.getTargetPort();
  spec.postCopy = request.getPostCopy();
  spec.tcpEstablished = request.getTcpEstablished();
  spec.leaveRunning = request.getLeaveRunning();
  spec.zstdLevel = request.getCompressionLevel() != 0 ? request.getCompressionLevel() : options_.zstdLevel;
  spec.zstdThreads = request.getCompressionThreads() != 0 ? static_cast<int>(request.getCompressionThreads())
                                                          : options_.zstdThreads;
  std::string name = spec.containerName;
  if (spec.postCopy && postCopyFor(name)) fail(ErrorKind::Conflict, "`" + name + "` is already serving its pages");

  std::shared_ptr<PostCopySource> postCopy;
  CheckpointSender sender(agent_, std::move(spec), progressReporter(), cancelled);
  SendStats stats = sender.run(&postCopy);
  if (postCopy) {
    std::lock_guard lock(postCopiesMutex_);
    // Dropped on a clash, it gives the container back (nothing runs it elsewhere yet).
    if (postCopies_.count(name)) fail(ErrorKind::Conflict, "`" + name + "` is already serving its pages");
    postCopies_[name] = postCopy;
  }

  auto s = reply.initStats();
  if (stats.criuDump) {
    auto get = [&](const char* key) { return stats.criuDump->count(key) ? stats.criuDump->at(key) : 0; };
    s.setFreezingNs(get("freezingTime"));
    s.setFrozenNs(get("frozenTime"));
    s.setMemdumpNs(get("memdumpTime"));
    s.setMemwriteNs(get("memwriteTime"));
    s.setPagesScanned(get("pagesScanned"));
    s.setPagesWritten(get("pagesWritten"));
  }
  s.setCheckpointNs(stats.checkpointNs);
  s.setStreamNs(stats.streamNs);
  s.setBytesRaw(stats.bundle.bytesRaw);
  s.setBytesWire(stats.bundle.bytesCompressed);
  s.setSha256(stats.bundle.tarSha256);
  auto phases = s.initPhases(3);
  phases[0].setPhase("connect");
  phases[0].setNanos(stats.connectNs);
  phases[1].setPhase("checkpoint");
  phases[1].setNanos(stats.checkpointNs);
  phases[2].setPhase("stream");
  phases[2].setNanos(stats.streamNs);
}

std::shared_ptr<std::atomic<bool>> AgentDaemon::registerSend(uint64_t requestId, const std::string& containerName) {
  std::lock_guard lock(sendsMutex_);
  auto cancelled = std::make_shared<std::atomic<bool>>(stopping_.load());
  sends_[requestId] = Send{containerName, cancelled};
  return cancelled;
}

void AgentDaemon::forgetSend(uint64_t requestId) {
  std::lock_guard lock(sendsMutex_);
  sends_.erase(requestId);
  sendsChanged_.notify_all();
}

void AgentDaemon::cancel(uint64_t requestId) {
  std::lock_guard lock(sendsMutex_);
  auto it = sends_.find(requestId);
  if (it == sends_.end()) {
    logInfo("cancel of request " + std::to_string(requestId) + ": nothing of it runs here");
    return;
  }
  *it->second.cancelled = true;
  logInfo("cancelling request " + std::to_string(requestId) + " (checkpoint and send `" +
          it->second.containerName + "`)");
}

void AgentDaemon::cancelSendsOf(const std::string& name) {
  std::unique_lock lock(sendsMutex_);
  auto running = [&] {
    for (auto& [id, send] : sends_) {
      if (send.containerName == name) return true;
    }
    return false;
  };
  if (!running()) return;
  logInfo("rollback of `" + name + "`: cancelling its checkpoint and send first");
  for (auto& [id, send] : sends_) {
    if (send.containerName == name) *send.cancelled = true;
  }
  // A stream stops within a fraction of a second; a dump when CRIU returns.
  if (!sendsChanged_.wait_for(lock, kSendStopWait, [&] { return !running(); })) {
    fail(ErrorKind::Conflict, "`" + name + "` is still being checkpointed or sent after " +
                                  std::to_string(kSendStopWait.count()) + " s; ask again");
  }
}

std::shared_ptr<PostCopySource> AgentDaemon::postCopyFor(const std::string& name) {
  std::lock_guard lock(postCopiesMutex_);
  auto it = postCopies_.find(name);
  return it == postCopies_.end() ? nullptr : it->second;
}

void AgentDaemon::forgetPostCopy(const std::shared_ptr<PostCopySource>& p) {
  std::lock_guard lock(postCopiesMutex_);
  auto it = postCopies_.find(p->containerName());
  if (it != postCopies_.end() && it->second == p) postCopies_.erase(it);
}

void AgentDaemon::finishPostCopy(uint64_t requestId, const std::string& migrationId, const std::string& name,
                                 milliseconds timeout, proto::Reply::Builder reply) {
  ErrorContext context("post-copy of `" + name + "`");
  auto p = postCopyFor(name);
  if (!p) {
    // A relay an earlier run of this agent started, still carrying pages.
    if (auto relay = PageRelayHandle::open(agent_.options().stateDir, migrationId)) {
      finishAdoptedPostCopy(requestId, migrationId, name, *relay, timeout, reply);
      return;
    }
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
  auto pages = p->waitForPages(timeout, [&](uint64_t sent) {
    postProgress(ProgressReport{p->migrationId(), requestId, Phase::Pages, sent, std::max(total, sent), nullptr});
  });
  forgetPostCopy(p);
  auto s = reply.initStats();
  s.setPagesNs(pages.pagesNs);
  s.setBytesPages(pages.bytesPages);
  s.setPageChannelReconnects(pages.reconnects);
  logInfo("post-copy of `" + name + "`: " + std::to_string(pages.bytesPages >> 20) + " MiB of pages in " +
          std::to_string(pages.pagesNs / 1000000) + " ms");
}

// The source side of a post-copy whose agent restarted: the relay and CRIU
// went on; wait for the relay's last page, then for CRIU, which kills the
// frozen container when its dump completes.
void AgentDaemon::finishAdoptedPostCopy(uint64_t requestId, const std::string& migrationId, const std::string& name,
                                        const PageRelayHandle& relay, milliseconds timeout,
                                        proto::Reply::Builder reply) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  auto cutLimit = std::chrono::steady_clock::now() + kPageChannelCutBudget;
  PageRelayStatus s;
  for (;;) {
    s = relay.status();
    if (s.state == RelayState::Done) break;
    if (s.state == RelayState::Failed) fail(ErrorKind::Failed, "page transfer failed: " + s.error);
    if (s.state != RelayState::Cut) cutLimit = std::chrono::steady_clock::now() + kPageChannelCutBudget;
    if (std::chrono::steady_clock::now() > cutLimit) {
      fail(ErrorKind::Failed, "page channel cut (" + s.error + "); `" + name + "` stays frozen here");
    }
    if (std::chrono::steady_clock::now() > deadline) {
      fail(ErrorKind::Disconnected, "pages still flowing after " + std::to_string(timeout.count() / 1000) + " s");
    }
    postProgress(ProgressReport{migrationId, requestId, Phase::Pages, s.bytesPages, s.bytesPages, nullptr});
    std::this_thread::sleep_for(milliseconds(200));
  }
  agent_.finishAdoptedLazyCheckpoint(name, readRelaySpec(relay.dir()).runcPid);
  auto stats = reply.initStats();
  stats.setBytesPages(s.bytesPages);
  stats.setPageChannelReconnects(s.reconnects);
  logInfo("post-copy of `" + name + "` (adopted relay): " + std::to_string(s.bytesPages >> 20) + " MiB of pages");
}

void AgentDaemon::fillPostCopyStatus(proto::PostCopyStatus::Builder out, const std::optional<PageRelayHandle>& relay) {
  if (!relay) {
    out.setState(proto::PostCopyRelayState::ABSENT);
    return;
  }
  auto s = relay->status();
  switch (s.state) {
    case RelayState::Starting: out.setState(proto::PostCopyRelayState::STARTING); break;
    case RelayState::Flowing: out.setState(proto::PostCopyRelayState::FLOWING); break;
    case RelayState::Cut: out.setState(proto::PostCopyRelayState::CUT); break;
    case RelayState::Done: out.setState(proto::PostCopyRelayState::DONE); break;
    case RelayState::Failed: out.setState(proto::PostCopyRelayState::FAILED); break;
  }
  out.setError(s.error);
  out.setBytesPages(s.bytesPages);
  out.setOutstandingRequests(s.outstanding);
  int64_t now = std::chrono::duration_cast<milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  out.setCutForMs(s.cutSinceMs > 0 && now > s.cutSinceMs ? static_cast<uint64_t>(now - s.cutSinceMs) : 0);
  out.setContainerFrozen(s.containerFrozen);
  out.setRelayPid(s.pid);
  out.setAdopted(relay->adopted());
}

void AgentDaemon::restore(proto::Restore::Reader request, proto::Reply::Builder reply) {
  std::string migrationId = request.getMigrationId();
  ErrorContext context("migration " + migrationId + ": restore");
  auto r = receivers_.find(migrationId);
  auto restored = r->restore(RestoreAsk{request.getExpectedSha256(), request.getTcpEstablished(), request.getPostCopy()},
                             kRestoreWaitForBundle);
  auto result = reply.initRestored();
  fillContainer(result.initContainer(), restored.container);
  auto stats = result.initStats();
  stats.setRestoreNs(restored.restoreNs);
  stats.setSha256(restored.sha256);
  auto& times = restored.times.seconds;
  auto phases = stats.initPhases(static_cast<unsigned>(times.size()));
  for (size_t i = 0; i < times.size(); ++i) {
    phases[static_cast<unsigned>(i)].setPhase(times[i].first);
    phases[static_cast<unsigned>(i)].setNanos(static_cast<uint64_t>(times[i].second * 1e9));
  }
}

void AgentDaemon::abortReceive(const std::string& migrationId) {
  if (auto r = receivers_.findIfLive(migrationId)) {
    // Its threads end by themselves (nothing here touches their sockets);
    // what they imported is removed below, so wait for them. The
    // coordinator asks again if this fails.
    if (!r->stop(kReceiverStopWait)) {
      fail(ErrorKind::Failed, "the receiver for migration " + migrationId + " did not stop within " +
                                  std::to_string(kReceiverStopWait.count() / 1000) + " s");
    }
    r->end("aborted by the coordinator");
  }
  // Whatever arrived or was restored here for this migration goes: the
  // source runs it again. Found by migration id, so this works also after
  // the agent restarted and lost its receiver; an import that died midway
  // (its staging dir and tmpfs) goes too.
  for (auto& c : agent_.list()) {
    if (c.state.migrationId == migrationId) agent_.remove(c.config.id, true);
  }
  // Post-copy: only now that its processes are gone may the relay let go
  // of their memory (page-relay.h).
  if (auto relay = PageRelayHandle::open(agent_.options().stateDir, migrationId)) {
    relay->stop();
    relay->remove();
  }
  agent_.removeStaleImports();
  logInfo("aborted receive of migration " + migrationId);
}

void AgentDaemon::rollbackSource(const std::string& name, const std::string& migrationId, proto::Reply::Builder reply) {
  // The coordinator gave up on a send still running here (its request timed
  // out, or this agent was away): stop it before taking the container back.
  cancelSendsOf(name);
  if (auto p = postCopyFor(name)) {
    // Mid post-copy: CRIU resumes the frozen container.
    p->giveBack();
    forgetPostCopy(p);
  } else if (auto relay = PageRelayHandle::open(agent_.options().stateDir, migrationId); relay && relay->alive()) {
    // Mid post-copy that an earlier run of this agent started: the relay
    // still holds CRIU's page server; stopping it makes CRIU resume.
    agent_.giveBackAdoptedLazyCheckpoint(name, readRelaySpec(relay->dir()).runcPid, [&] { relay->stop(); });
  }
  if (auto relay = PageRelayHandle::open(agent_.options().stateDir, migrationId)) relay->remove();
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
  ImageTransferSpec spec{request.getDigest(), request.getPskIdentity(), bytesOf(request.getPsk())};
  milliseconds timeout = request.getAcceptTimeoutMs() ? milliseconds(request.getAcceptTimeoutMs()) : kDefaultAcceptTimeout;
  workers_.start([this, listener, spec, timeout] {
    try {
      migrate::receiveImage(agent_.images(), *listener, spec, timeout, stopping_);
    } catch (const std::exception& e) {
      logWarn(std::string("receive image: ") + e.what());
    }
  });
}

void AgentDaemon::sendImage(proto::SendImage::Reader request) {
  ImageTransferSpec spec{request.getImage(), request.getPskIdentity(), bytesOf(request.getPsk())};
  migrate::sendImage(agent_.images(), spec, request.getTargetAddress(), request.getTargetPort());
}

}  // namespace migrate
