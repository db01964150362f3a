#include "coordinator/test-cluster.h"

#include <capnp/message.h>

#include "agent/id-mapping-proto.h"
#include "common/log.h"
#include "tests/support/wait.h"

namespace migrate::testing {

using namespace std::chrono_literals;

std::string requestName(proto::Request::Reader request) {
  switch (request.which()) {
    case proto::Request::RUN_CONTAINER: return "runContainer";
    case proto::Request::LIST_CONTAINERS: return "listContainers";
    case proto::Request::REMOVE_CONTAINER: return "removeContainer";
    case proto::Request::STOP_CONTAINER: return "stopContainer";
    case proto::Request::CONTAINER_LOGS: return "containerLogs";
    case proto::Request::PREPARE_RECEIVE: return "prepareReceive";
    case proto::Request::CHECKPOINT_AND_SEND: return "checkpointAndSend";
    case proto::Request::RESTORE: return "restore";
    case proto::Request::COMMIT_SOURCE: return "commitSource";
    case proto::Request::ROLLBACK_SOURCE: return "rollbackSource";
    case proto::Request::ABORT_RECEIVE: return "abortReceive";
    case proto::Request::CHECK_CPU_INFO: return "checkCpuInfo";
    case proto::Request::SEND_IMAGE: return "sendImage";
    case proto::Request::RECEIVE_IMAGE: return "receiveImage";
    case proto::Request::CANCEL: return "cancel";
    case proto::Request::START_CONTAINER: return "startContainer";
    case proto::Request::LIST_IMAGES: return "listImages";
    case proto::Request::DESCRIBE_HOST: return "describeHost";
    case proto::Request::FINISH_POST_COPY: return "finishPostCopy";
    case proto::Request::POST_COPY_STATUS: return "postCopyStatus";
    case proto::Request::RESUME_POST_COPY: return "resumePostCopy";
    case proto::Request::MEASURE_CHECKPOINT: return "measureCheckpoint";
  }
  return "unknown";
}

FakeAgent::FakeAgent(zmq::context_t& context, const std::string& endpoint, const std::string& serverKey,
                     std::string name, CurveKeyPair keys, std::vector<SeenRequest>& log, std::mutex& logMutex)
    : context_(context),
      endpoint_(endpoint),
      serverKey_(serverKey),
      name_(std::move(name)),
      keys_(std::move(keys)),
      log_(log),
      logMutex_(logMutex) {
  thread_ = std::thread([this] { loop(); });
}

FakeAgent::~FakeAgent() {
  stop_ = true;
  thread_.join();
}

void FakeAgent::setHandler(std::string request, Handler handler) {
  std::lock_guard lock(mutex_);
  handlers_[std::move(request)] = std::move(handler);
}

void FakeAgent::addContainer(std::string name, std::string state, std::optional<IdMapping> idMapping) {
  std::lock_guard lock(mutex_);
  std::erase_if(containers_, [&](auto& c) { return c.name == name; });
  containers_.push_back({std::move(name), std::move(state), idMapping});
}

void FakeAgent::setRelay(proto::PostCopyRelayState state, std::string error, uint32_t outstandingRequests) {
  std::lock_guard lock(mutex_);
  relayState_ = state;
  relayError_ = std::move(error);
  relayOutstanding_ = outstandingRequests;
}

void FakeAgent::dropRequests(std::string request) {
  std::lock_guard lock(mutex_);
  dropped_.insert(std::move(request));
}

proto::PostCopyRelayState FakeAgent::relayState() {
  std::lock_guard lock(mutex_);
  return relayState_;
}

std::vector<std::string> FakeAgent::resumeKeys() {
  std::lock_guard lock(mutex_);
  return resumeKeys_;
}

void FakeAgent::removeContainer(const std::string& name) {
  std::lock_guard lock(mutex_);
  std::erase_if(containers_, [&](auto& c) { return c.name == name; });
}

void FakeAgent::fillContainers(capnp::List<proto::ContainerInfo>::Builder list) {
  for (unsigned i = 0; i < containers_.size(); ++i) {
    list[i].setName(containers_[i].name);
    list[i].setImage("test-image");
    list[i].setImageDigest("sha256:abc");
    // Distinct per name, the same on every host (it moves with the container).
    list[i].setIp("198.18.0." + std::to_string(10 + std::hash<std::string>()(containers_[i].name) % 200));
    list[i].setState(containers_[i].state == "running" ? proto::ContainerState::RUNNING
                     : containers_[i].state == "checkpointed" ? proto::ContainerState::CHECKPOINTED
                                                               : proto::ContainerState::STOPPED);
    if (containers_[i].idMapping) fillIdMapping(list[i].initIdMapping(), *containers_[i].idMapping);
  }
}

void FakeAgent::loop() {
  ControlClient client(context_, endpoint_, keys_, serverKey_);
  bool sendRegister = false;
  client.onConnected([&] { sendRegister = true; });
  auto lastHeartbeat = std::chrono::steady_clock::now() - 1h;
  while (!stop_) {
    if (sendRegister) {
      sendRegister = false;
      capnp::MallocMessageBuilder message;
      auto reg = message.initRoot<proto::Message>().initRegister();
      reg.setHostName(name_);
      reg.setProtocolVersion(proto::PROTOCOL_VERSION);
      reg.setCriuVersion("4.2.1");
      reg.setRuncVersion("1.1.5");
      reg.setDataAddress("127.0.0.1");
      std::string signingKey = signingKey_.publicKey();
      reg.setSigningKey(kj::arrayPtr(reinterpret_cast<const kj::byte*>(signingKey.data()), signingKey.size()));
      static const kj::byte cpuInfo[] = {1, 2, 3, 4};
      reg.setCpuInfo(kj::arrayPtr(cpuInfo, sizeof cpuInfo));
      reg.initCapacity().setMemBytes(8ull << 30);
      auto images = reg.initImages(1);
      images[0].setDigest("sha256:abc");
      images[0].setSizeBytes(1 << 20);
      {
        std::lock_guard lock(mutex_);
        fillContainers(reg.initContainers(static_cast<unsigned>(containers_.size())));
      }
      client.send(message);
    }
    if (!silent_ && client.connected() && std::chrono::steady_clock::now() - lastHeartbeat > 50ms) {
      lastHeartbeat = std::chrono::steady_clock::now();
      capnp::MallocMessageBuilder message;
      auto hb = message.initRoot<proto::Message>().initHeartbeat();
      hb.initLoad().setMemAvailableBytes(4ull << 30);
      hb.getLoad().setDiskAvailableBytes(10ull << 30);
      std::lock_guard lock(mutex_);
      fillContainers(hb.initContainers(static_cast<unsigned>(containers_.size())));
      client.send(message);
    }
    auto incoming = client.receive(20ms);
    if (!incoming) continue;
    auto root = incoming->root();
    if (root.isRegistered()) {
      registered_ = true;
      continue;
    }
    if (!root.isRequest() || silent_) continue;
    auto request = root.getRequest();
    std::string name = requestName(request);
    {
      std::lock_guard lock(logMutex_);
      log_.push_back({name_, name});
    }
    {
      std::lock_guard lock(mutex_);
      if (dropped_.count(name)) continue;
    }
    capnp::MallocMessageBuilder message;
    auto reply = message.initRoot<proto::Message>().initReply();
    reply.setRequestId(request.getRequestId());
    reply.setOk(true);
    Handler handler;
    {
      std::lock_guard lock(mutex_);
      if (auto it = handlers_.find(name); it != handlers_.end()) handler = it->second;
    }
    if (!handler || !handler(request, reply)) {
      std::lock_guard lock(mutex_);
      switch (request.which()) {
        case proto::Request::LIST_CONTAINERS:
          fillContainers(reply.initContainers(static_cast<unsigned>(containers_.size())));
          break;
        case proto::Request::LIST_IMAGES: {
          auto images = reply.initImages(1);
          images[0].setDigest("sha256:abc");
          break;
        }
        case proto::Request::PREPARE_RECEIVE: {
          auto prepare = request.getPrepareReceive();
          receiving_[prepare.getContainerName().cStr()] =
              idMappingFromProto(prepare.getExpectedManifest().getIdMapping());
          reply.setPort(40000);
          break;
        }
        case proto::Request::RECEIVE_IMAGE:
          reply.setPort(40000);
          break;
        case proto::Request::CHECKPOINT_AND_SEND: {
          for (auto& c : containers_) {
            if (c.name == request.getCheckpointAndSend().getContainerName().cStr()) c.state = "checkpointed";
          }
          auto stats = reply.initStats();
          stats.setBytesRaw(1000);
          stats.setBytesWire(400);
          stats.setCheckpointNs(1000000);
          stats.setSha256("aa");
          break;
        }
        case proto::Request::RESTORE: {
          std::string name = request.getRestore().getContainerName().cStr();
          containers_.push_back({name, "running", receiving_[name]});
          receiving_.erase(name);
          auto restored = reply.initRestored();
          restored.getContainer().setName(request.getRestore().getContainerName());
          restored.getStats().setSha256("aa");
          break;
        }
        case proto::Request::COMMIT_SOURCE:
          std::erase_if(containers_,
                        [&](auto& c) { return c.name == request.getCommitSource().getContainerName().cStr(); });
          break;
        case proto::Request::ROLLBACK_SOURCE:
          for (auto& c : containers_) {
            if (c.name == request.getRollbackSource().getContainerName().cStr()) c.state = "running";
          }
          break;
        case proto::Request::RUN_CONTAINER:
          containers_.push_back({request.getRunContainer().getName().cStr(), "running", std::nullopt});
          reply.initContainer().setName(request.getRunContainer().getName());
          reply.getContainer().setState(proto::ContainerState::RUNNING);
          break;
        case proto::Request::CONTAINER_LOGS:
          reply.setLogs("hello\n");
          break;
        case proto::Request::RESUME_POST_COPY: {
          auto psk = request.getResumePostCopy().getPsk();
          resumeKeys_.emplace_back(reinterpret_cast<const char*>(psk.begin()), psk.size());
          relayState_ = proto::PostCopyRelayState::FLOWING;
          relayError_.clear();
          [[fallthrough]];
        }
        case proto::Request::POST_COPY_STATUS: {
          auto status = reply.initPostCopy();
          status.setState(relayState_);
          status.setError(relayError_);
          status.setOutstandingRequests(relayOutstanding_);
          break;
        }
        default:
          reply.setNone();
      }
    }
    client.send(message);
  }
}

Cluster::Cluster(std::chrono::milliseconds heartbeatInterval, std::vector<std::string> allowedOnly)
    : heartbeat(heartbeatInterval) {
  for (auto name : {"host1", "host2", "host3"}) agentKeys[name] = generateCurveKeyPair();
  for (auto& name : allowedOnly) allowedOnlyKeys[name] = generateCurveKeyPair();
  endpoint = "tcp://127.0.0.1:*";
  buildCoordinator();
  endpoint = server->endpoint();
  for (auto& [name, keys] : agentKeys) {
    agents[name] =
        std::make_unique<FakeAgent>(context, endpoint, coordinatorKeys.publicKey, name, keys, log, logMutex);
  }
}

void Cluster::buildCoordinator() {
  std::vector<AllowedHost> allowed;
  for (auto& [name, keys] : agentKeys) allowed.push_back({name, keys.publicKey, {}});
  for (auto& [name, keys] : allowedOnlyKeys) allowed.push_back({name, keys.publicKey, {}});
  registry = std::make_unique<HostRegistry>(allowed, heartbeat);
  journal = std::make_unique<Journal>(dir.path() / "coordinator.db");
  server = std::make_unique<ControlServer>(context, endpoint, coordinatorKeys, registry->keyToHost(), 3 * heartbeat);
  link = std::make_unique<AgentLink>(*server, *registry, "test");
  CoordinatorOptions options;
  options.retryInterval = 200ms;
  options.timeouts.request = 3s;
  options.timeouts.checkpointAndSend = 5s;
  options.timeouts.restore = 5s;
  options.timeouts.commitSource = 3s;
  options.timeouts.rollbackSource = 3s;
  options.timeouts.agentGrace = 1s;
  options.timeouts.recoveryInterval = 200ms;
  options.observer = [this](const std::string& event, const MigrationRecord& record) {
    std::lock_guard lock(logMutex);
    eventLog.emplace_back(record.id, event);
  };
  coordinator = std::make_unique<Coordinator>(*journal, *registry, *link, nullptr, options);
}

Cluster::~Cluster() {
  if (coordinator) coordinator->shutdown();
  agents.clear();
  coordinator.reset();
  link.reset();
  server.reset();
}

FakeAgent& Cluster::agent(const std::string& name) { return *agents.at(name); }

void Cluster::start() {
  coordinator->start();
  link->start();
  bool registered = test::waitUntil([&] {
    bool all = true;
    for (auto& [name, a] : agents) all &= registry->isUp(name);
    return all;
  }, 10s);
  if (!registered) throw std::runtime_error("agents did not register");
}

void Cluster::restartCoordinator() {
  coordinator->shutdown();
  coordinator.reset();
  link.reset();
  server.reset();
  journal.reset();
  registry.reset();
  buildCoordinator();
  start();
}

std::vector<SeenRequest> Cluster::seen() {
  std::lock_guard lock(logMutex);
  return log;
}

std::vector<std::string> Cluster::events(const std::string& id) {
  std::lock_guard lock(logMutex);
  std::vector<std::string> out;
  for (auto& [migration, event] : eventLog) {
    if (migration == id) out.push_back(event);
  }
  return out;
}

std::vector<std::string> Cluster::seenNames(const std::string& host) {
  std::vector<std::string> out;
  for (auto& s : seen()) {
    if (s.host == host) out.push_back(s.name);
  }
  return out;
}

}  // namespace migrate::testing
