#include "coordinator/agent-link.h"

#include "common/log.h"

namespace migrate {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

// The poll thread's slice; a queued send wakes it at once (wakeup_).
constexpr auto kPollSlice = 100ms;
// How often a waiting call re-checks that its host is still up.
constexpr auto kLivenessCheck = 200ms;

}  // namespace

AgentLink::AgentLink(ControlServer& server, HostRegistry& registry, std::string coordinatorVersion)
    : server_(server), registry_(registry), coordinatorVersion_(std::move(coordinatorVersion)) {}

AgentLink::~AgentLink() { stop(); }

void AgentLink::start() {
  thread_ = std::thread([this] { pollLoop(); });
}

void AgentLink::stop() {
  stopping_ = true;
  if (thread_.joinable()) thread_.join();
  std::lock_guard lock(mutex_);
  for (auto& [id, pending] : pending_) {
    if (!pending.reply && !pending.error) {
      pending.error = Error(ErrorKind::Disconnected, pending.host + ": coordinator is shutting down");
    }
  }
  changed_.notify_all();
}

void AgentLink::enqueue(Outgoing outgoing) {
  {
    std::lock_guard lock(mutex_);
    outbox_.push_back(std::move(outgoing));
  }
  wakeup_.notify();
}

void AgentLink::failPending(uint64_t requestId, Error error) {
  std::lock_guard lock(mutex_);
  auto it = pending_.find(requestId);
  if (it == pending_.end()) return;
  it->second.error = std::move(error);
  changed_.notify_all();
}

ReplyMessage AgentLink::call(const CallSpec& spec, const RequestFiller& fill) {
  uint64_t requestId = spec.requestId ? spec.requestId : newRequestId();
  if (stopping_) fail(ErrorKind::Disconnected, spec.host + ": coordinator is shutting down");
  if (!registry_.isKnown(spec.host)) fail(ErrorKind::NotFound, "unknown host `" + spec.host + "`");
  if (!registry_.isUp(spec.host)) {
    fail(ErrorKind::Disconnected, spec.host + ": host is down (not registered or no heartbeat), cannot " + spec.what);
  }
  uint64_t session = registry_.session(spec.host);

  auto message = std::make_unique<capnp::MallocMessageBuilder>();
  auto request = message->initRoot<proto::Message>().initRequest();
  request.setRequestId(requestId);
  request.setMigrationId(spec.migrationId);
  request.setTimeoutMs(static_cast<uint32_t>(spec.timeout.count()));
  fill(request);

  {
    std::lock_guard lock(mutex_);
    pending_[requestId] = Pending{spec.host, std::nullopt, std::nullopt};
    outbox_.push_back(Outgoing{spec.host, requestId, std::move(message)});
  }
  wakeup_.notify();
  logDebug("link: " + spec.what + " -> " + spec.host + " (request " + std::to_string(requestId) + ")");

  auto deadline = Clock::now() + spec.timeout;
  std::unique_lock lock(mutex_);
  for (;;) {
    auto& pending = pending_.at(requestId);
    if (pending.reply) {
      ParsedMessage parsed = std::move(*pending.reply);
      pending_.erase(requestId);
      lock.unlock();
      auto reply = parsed.root().getReply();
      if (!reply.getOk()) {
        fail(errorKindFromSchema(reply.getErrorKind()), spec.host + ": " + reply.getErrorMessage().cStr());
      }
      return ReplyMessage(std::move(parsed));
    }
    if (pending.error) {
      Error error = *pending.error;
      pending_.erase(requestId);
      throw error;
    }
    std::string lost;
    if (Clock::now() >= deadline) {
      lost = spec.host + ": no reply to " + spec.what + " within " +
             std::to_string(std::chrono::duration_cast<std::chrono::seconds>(spec.timeout).count()) + "s";
    } else if (!registry_.isUp(spec.host)) {
      lost = spec.host + ": host went down (3 heartbeats missed) during " + spec.what;
    } else if (registry_.session(spec.host) != session) {
      lost = spec.host + ": agent re-registered (restarted) during " + spec.what;
    } else if (!spec.alsoWatch.empty() && !registry_.isUp(spec.alsoWatch)) {
      lost = spec.alsoWatch + ": host went down (3 heartbeats missed) during " + spec.what + " on " + spec.host;
    }
    if (!lost.empty()) {
      pending_.erase(requestId);
      fail(ErrorKind::Disconnected, lost);
    }
    changed_.wait_until(lock, std::min(deadline, Clock::now() + kLivenessCheck));
  }
}

void AgentLink::cancel(const std::string& host, uint64_t requestId) {
  auto message = std::make_unique<capnp::MallocMessageBuilder>();
  auto request = message->initRoot<proto::Message>().initRequest();
  request.setRequestId(newRequestId());
  request.initCancel().setRequestId(requestId);
  enqueue(Outgoing{host, 0, std::move(message)});
}

void AgentLink::pollLoop() {
  while (!stopping_) {
    sendQueued();
    try {
      auto incoming = server_.receive(kPollSlice, &wakeup_);
      if (incoming) dispatch(*incoming);
    } catch (const std::exception& e) {
      // A malformed frame from one host must not stop the others' traffic.
      logWarn(std::string("link: ") + e.what());
    }
  }
}

void AgentLink::sendQueued() {
  std::deque<Outgoing> batch;
  {
    std::lock_guard lock(mutex_);
    batch.swap(outbox_);
  }
  for (auto& out : batch) {
    try {
      server_.send(out.host, *out.message);
    } catch (const Error& e) {
      if (out.requestId) failPending(out.requestId, e);
      else logWarn(std::string("link: ") + e.what());
    }
  }
}

void AgentLink::dispatch(ControlServer::Incoming& incoming) {
  const std::string& host = incoming.host;
  auto root = incoming.message.root();
  registry_.touch(host);
  switch (root.which()) {
    case proto::Message::REGISTER:
      handleRegister(host, root.getRegister());
      break;
    case proto::Message::HEARTBEAT:
      registry_.recordHeartbeat(host, root.getHeartbeat());
      break;
    case proto::Message::REPLY:
      handleReply(host, incoming.message);
      break;
    case proto::Message::PROGRESS: {
      auto p = root.getProgress();
      ProgressUpdate update{host, p.getMigrationId().cStr(), phaseFromName(p.getPhase().cStr()), p.getBytesDone(), p.getBytesTotal(),
                            p.getRequestId(), p.getError().cStr(), errorKindFromSchema(p.getErrorKind())};
      if (onProgress_) onProgress_(update);
      break;
    }
    default:
      logWarn("link: unexpected message from `" + host + "` (variant " + std::to_string(int(root.which())) + ")");
  }
}

void AgentLink::handleRegister(const std::string& host, proto::Register::Reader reg) {
  if (reg.getProtocolVersion() != proto::PROTOCOL_VERSION) {
    logError("link: refusing `" + host + "`: it speaks control protocol " + std::to_string(reg.getProtocolVersion()) +
             ", this coordinator " + std::to_string(proto::PROTOCOL_VERSION));
    return;
  }
  // The key decides who a host is; a mismatching claim is a misconfiguration
  // (keys copied between hosts) that would otherwise route requests wrongly.
  if (std::string(reg.getHostName().cStr()) != host) {
    logError("link: refusing registration: the key of `" + host + "` claims to be `" + reg.getHostName().cStr() +
             "`; fix the agent's --name or the allow-list");
    return;
  }
  registry_.recordRegister(host, reg);
  logInfo("link: `" + host + "` registered (criu " + reg.getCriuVersion().cStr() + ", runc " +
          reg.getRuncVersion().cStr() + ", data " + reg.getDataAddress().cStr() + ", " +
          std::to_string(reg.getContainers().size()) + " containers)");

  capnp::MallocMessageBuilder message;
  auto registered = message.initRoot<proto::Message>().initRegistered();
  registered.setCoordinatorVersion(coordinatorVersion_);
  registered.setHeartbeatIntervalMs(static_cast<uint32_t>(registry_.heartbeatInterval().count()));
  registered.setHostName(host);
  try {
    server_.send(host, message);
  } catch (const Error& e) {
    logWarn(std::string("link: ") + e.what());
  }
  if (onRegistered_) onRegistered_(host);
}

void AgentLink::handleReply(const std::string& host, ParsedMessage& message) {
  uint64_t requestId = message.root().getReply().getRequestId();
  std::lock_guard lock(mutex_);
  auto it = pending_.find(requestId);
  if (it == pending_.end()) {
    logDebug("link: reply from `" + host + "` to request " + std::to_string(requestId) + " nobody waits for");
    return;
  }
  if (it->second.host != host) {
    logWarn("link: `" + host + "` replied to request " + std::to_string(requestId) + " sent to `" + it->second.host +
            "`; ignored");
    return;
  }
  it->second.reply = std::move(message);
  changed_.notify_all();
}

}  // namespace migrate
