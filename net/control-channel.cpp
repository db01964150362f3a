#include "net/control-channel.h"

#include <poll.h>
#include <sys/eventfd.h>

#include <cstring>
#include <random>
#include <thread>
#include <vector>
#include <zmq_addon.hpp>

#include "common/fd.h"
#include "common/log.h"
#include "common/syscall.h"

namespace migrate {

Wakeup::Wakeup() : fd_(SYSCALL(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK), "control: eventfd")) {}

void Wakeup::notify() {
  uint64_t one = 1;
  (void)!::write(fd_.get(), &one, sizeof one);  // EAGAIN only when already pending
}

void Wakeup::drain() {
  uint64_t count;
  (void)!::read(fd_.get(), &count, sizeof count);
}

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// Reconnect quickly at first (a coordinator restart takes a second or two),
// backing off so a long outage does not spin.
constexpr int kReconnectIvlMs = 100;
constexpr int kReconnectIvlMaxMs = 2000;
// ZMTP heartbeats: a peer that stops answering PINGs for kHeartbeatTimeoutMs
// is dropped, so the DEALER reconnects and the ROUTER forgets the routing id,
// instead of waiting for TCP's own timeouts (minutes).
constexpr int kHeartbeatIvlMs = 1000;
constexpr int kHeartbeatTimeoutMs = 3000;
constexpr int kHeartbeatTtlMs = 6000;
constexpr int kHandshakeIvlMs = 10000;

// Traversal budget for one message: every pointer followed is charged, so a
// frame built from lists that alias the same bytes cannot make us walk
// gigabytes. Four times the largest frame leaves room for the validation pass
// plus the handler reading the message a few times over.
constexpr uint64_t kTraversalLimitWords = 4 * static_cast<uint64_t>(kMaxControlFrameBytes) / sizeof(capnp::word);
constexpr int kNestingLimit = 32;

constexpr const char* kZapEndpoint = "inproc://zeromq.zap.01";
constexpr const char* kZapDomain = "migrate-control";
// ZMQ_ZAP_ENFORCE_DOMAIN is a draft option (not in the stable headers). Where
// the library has it, it makes a missing ZAP handler fail handshakes rather
// than admit everyone; we set it best-effort.
constexpr int kZapEnforceDomainOption = 93;

[[noreturn]] void failZmq(const zmq::error_t& e, const std::string& what) {
  failErrno(e.num(), what + " (zmq: " + e.what() + ")");
}

// Binds, retrying EADDRINUSE for a while: ZeroMQ closes sockets
// asynchronously (reaper thread), so a predecessor in this process, or one
// that just exited, may still hold the address for a moment.
void bindWithRetry(zmq::socket_t& socket, const std::string& endpoint) {
  auto deadline = Clock::now() + std::chrono::seconds(3);
  for (;;) {
    try {
      socket.bind(endpoint);
      return;
    } catch (const zmq::error_t& e) {
      if (e.num() == EADDRINUSE && Clock::now() < deadline) {
        std::this_thread::sleep_for(milliseconds(50));
        continue;
      }
      failZmq(e, "control: bind " + endpoint);
    }
  }
}

void setCommonOptions(zmq::socket_t& socket) {
  // Nothing queued is worth delaying shutdown for: replies to a coordinator
  // that is gone are re-requested, and requests to a gone agent time out.
  socket.set(zmq::sockopt::linger, 0);
  socket.set(zmq::sockopt::maxmsgsize, kMaxControlFrameBytes);
  socket.set(zmq::sockopt::heartbeat_ivl, kHeartbeatIvlMs);
  socket.set(zmq::sockopt::heartbeat_timeout, kHeartbeatTimeoutMs);
  socket.set(zmq::sockopt::heartbeat_ttl, kHeartbeatTtlMs);
  socket.set(zmq::sockopt::handshake_ivl, kHandshakeIvlMs);
}

// zmq::poll over up to two sockets; EINTR counts as "nothing yet".
void pollSockets(std::vector<zmq::pollitem_t>& items, milliseconds timeout) {
  try {
    zmq::poll(items.data(), items.size(), timeout);
  } catch (const zmq::error_t& e) {
    if (e.num() != EINTR) failZmq(e, "control: poll");
    for (auto& item : items) item.revents = 0;
  }
}

milliseconds remainingUntil(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now());
  return left.count() > 0 ? left : milliseconds(0);
}

std::string randomHex(size_t bytes) {
  std::random_device random;
  std::string out;
  static constexpr char kDigits[] = "0123456789abcdef";
  for (size_t i = 0; i < bytes; ++i) {
    auto b = static_cast<unsigned>(random()) & 0xff;
    out += kDigits[b >> 4];
    out += kDigits[b & 0xf];
  }
  return out;
}

std::string z85Encode(const void* data, size_t size) {
  std::string out(size * 5 / 4 + 1, '\0');
  if (zmq_z85_encode(out.data(), static_cast<const uint8_t*>(data), size) == nullptr) return {};
  out.resize(size * 5 / 4);
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------
// Frames <-> messages

zmq::message_t messageToFrame(capnp::MessageBuilder& message) {
  kj::Array<capnp::word> words = capnp::messageToFlatArray(message);
  auto bytes = words.asBytes();
  return zmq::message_t(bytes.begin(), bytes.size());
}

ParsedMessage::ParsedMessage(std::string_view frame, std::string_view from) {
  auto malformed = [&](const std::string& why) {
    fail(ErrorKind::InvalidInput, "control: malformed frame from " + std::string(from) + ": " + why);
  };
  if (frame.empty() || frame.size() % sizeof(capnp::word) != 0) {
    malformed(std::to_string(frame.size()) + " bytes is not a whole number of 8-byte words");
  }
  words_ = kj::heapArray<capnp::word>(frame.size() / sizeof(capnp::word));
  std::memcpy(words_.begin(), frame.data(), frame.size());

  capnp::ReaderOptions options;
  options.traversalLimitInWords = kTraversalLimitWords;
  options.nestingLimit = kNestingLimit;
  try {
    reader_ = std::make_unique<capnp::FlatArrayMessageReader>(words_.asPtr(), options);
    root_ = reader_->getRoot<proto::Message>();
    // Walks every pointer once, so bounds and nesting errors surface here as
    // InvalidInput rather than later inside some handler.
    (void)root_.totalSize();
  } catch (const kj::Exception& e) {
    malformed(std::string("not a Cap'n Proto message: ") + e.getDescription().cStr());
  }
  if (reader_->getEnd() != words_.end()) {
    malformed(std::to_string((words_.end() - reader_->getEnd()) * sizeof(capnp::word)) +
              " trailing bytes after the message");
  }
}

// ---------------------------------------------------------------------------
// Errors across the wire

proto::ErrorKind errorKindToSchema(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::Failed: return proto::ErrorKind::FAILED;
    case ErrorKind::Overloaded: return proto::ErrorKind::OVERLOADED;
    case ErrorKind::Disconnected: return proto::ErrorKind::DISCONNECTED;
    case ErrorKind::Unimplemented: return proto::ErrorKind::UNIMPLEMENTED;
    case ErrorKind::InvalidInput: return proto::ErrorKind::INVALID_INPUT;
    case ErrorKind::NotFound: return proto::ErrorKind::NOT_FOUND;
    case ErrorKind::Conflict: return proto::ErrorKind::CONFLICT;
    case ErrorKind::Cancelled: return proto::ErrorKind::CANCELLED;
  }
  return proto::ErrorKind::FAILED;
}

ErrorKind errorKindFromSchema(proto::ErrorKind kind) {
  switch (kind) {
    case proto::ErrorKind::FAILED: return ErrorKind::Failed;
    case proto::ErrorKind::OVERLOADED: return ErrorKind::Overloaded;
    case proto::ErrorKind::DISCONNECTED: return ErrorKind::Disconnected;
    case proto::ErrorKind::UNIMPLEMENTED: return ErrorKind::Unimplemented;
    case proto::ErrorKind::INVALID_INPUT: return ErrorKind::InvalidInput;
    case proto::ErrorKind::NOT_FOUND: return ErrorKind::NotFound;
    case proto::ErrorKind::CONFLICT: return ErrorKind::Conflict;
    case proto::ErrorKind::CANCELLED: return ErrorKind::Cancelled;
  }
  // A kind added by a newer peer: the safe reading is "do not retry blindly".
  return ErrorKind::Failed;
}

void setReplyError(proto::Reply::Builder reply, const std::exception& error) {
  reply.setOk(false);
  reply.setErrorKind(errorKindToSchema(kindOf(error)));
  reply.setErrorMessage(error.what());
  reply.setNone();
}

void checkReply(proto::Reply::Reader reply, std::string_view what) {
  if (reply.getOk()) return;
  fail(errorKindFromSchema(reply.getErrorKind()), std::string(what) + ": " + reply.getErrorMessage().cStr());
}

// ---------------------------------------------------------------------------
// ZAP handler (RFC 27): admits a CURVE client only if its public key is on the
// allow-list, and names the connection after the key's host (User-Id).

class ControlServer::ZapHandler {
 public:
  ZapHandler(zmq::context_t& context, std::map<std::string, std::string> allowed)
      : socket_(context, zmq::socket_type::rep), allowed_(std::move(allowed)) {
    socket_.set(zmq::sockopt::linger, 0);
    wake_ = Fd(SYSCALL(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK), "control: eventfd for ZAP handler"));
    bindWithRetry(socket_, kZapEndpoint);
    thread_ = std::thread([this] { run(); });
  }

  ~ZapHandler() {
    uint64_t one = 1;
    (void)!::write(wake_.get(), &one, sizeof(one));
    thread_.join();
  }

  void allow(const std::string& publicKey, const std::string& host) {
    std::lock_guard lock(mutex_);
    allowed_[publicKey] = host;
  }
  void revoke(const std::string& publicKey) {
    std::lock_guard lock(mutex_);
    allowed_.erase(publicKey);
  }
  uint64_t refused() const { return refused_.load(); }

 private:
  void run() {
    for (;;) {
      try {
        std::vector<zmq::pollitem_t> items = {{socket_.handle(), 0, ZMQ_POLLIN, 0}, {nullptr, wake_.get(), ZMQ_POLLIN, 0}};
        pollSockets(items, milliseconds(-1));
        if (items[1].revents & ZMQ_POLLIN) return;
        if (!(items[0].revents & ZMQ_POLLIN)) continue;
        std::vector<zmq::message_t> request;
        if (!zmq::recv_multipart(socket_, std::back_inserter(request), zmq::recv_flags::dontwait)) continue;
        answer(request);
      } catch (const zmq::error_t& e) {
        if (e.num() == ETERM) return;
        logError(std::string("control: ZAP handler: ") + e.what());
      } catch (const std::exception& e) {
        logError(std::string("control: ZAP handler: ") + e.what());
      }
    }
  }

  void answer(const std::vector<zmq::message_t>& request) {
    std::string requestId = request.size() > 1 ? request[1].to_string() : "";
    std::string status = "500", statusText = "malformed ZAP request", userId;
    if (request.size() >= 7 && request[0].to_string_view() == "1.0" && request[5].to_string_view() == "CURVE" &&
        request[6].size() == 32) {
      std::string address = request[3].to_string();
      std::string key = z85Encode(request[6].data(), request[6].size());
      std::optional<std::string> host;
      {
        std::lock_guard lock(mutex_);
        if (auto it = allowed_.find(key); it != allowed_.end()) host = it->second;
      }
      if (host) {
        status = "200";
        statusText = "OK";
        userId = *host;
        logDebug("control: admitted `" + *host + "` from " + address);
      } else {
        status = "400";
        statusText = "unknown public key";
        ++refused_;
        logWarn("control: refused CURVE client " + key + " from " + address + ": key not on the allow-list");
      }
    } else if (request.size() >= 6 && request[5].to_string_view() != "CURVE") {
      // Only CURVE sockets should ever ask; anything else is a misconfiguration.
      status = "400";
      statusText = "CURVE required";
      ++refused_;
      logWarn("control: refused a " + request[5].to_string() + " client: CURVE required");
    }
    std::vector<zmq::message_t> reply;
    reply.emplace_back(std::string_view("1.0"));
    reply.emplace_back(requestId);
    reply.emplace_back(status);
    reply.emplace_back(statusText);
    reply.emplace_back(userId);
    reply.emplace_back();  // Metadata: none.
    zmq::send_multipart(socket_, reply);
  }

  zmq::socket_t socket_;
  Fd wake_;
  mutable std::mutex mutex_;
  std::map<std::string, std::string> allowed_;
  std::atomic<uint64_t> refused_{0};
  std::thread thread_;
};

// ---------------------------------------------------------------------------
// ControlServer

ControlServer::ControlServer(zmq::context_t& context, std::string endpoint, CurveKeyPair serverKeys,
                             std::map<std::string, std::string> allowed, milliseconds livenessTimeout)
    : livenessTimeout_(livenessTimeout) {
  checkCurveKey(serverKeys.publicKey, "coordinator public key");
  checkCurveKey(serverKeys.secretKey, "coordinator secret key");
  for (auto& [key, host] : allowed) checkCurveKey(key, "public key of host `" + host + "`");

  // The ZAP handler must be bound before the ROUTER accepts anything: without
  // a handler, libzmq admits every CURVE client.
  zap_ = std::make_unique<ZapHandler>(context, std::move(allowed));

  socket_ = zmq::socket_t(context, zmq::socket_type::router);
  setCommonOptions(socket_);
  // Unroutable sends fail (EHOSTUNREACH) instead of vanishing silently.
  socket_.set(zmq::sockopt::router_mandatory, true);
  socket_.set(zmq::sockopt::curve_server, true);
  socket_.set(zmq::sockopt::curve_secretkey, serverKeys.secretKey);
  socket_.set(zmq::sockopt::zap_domain, kZapDomain);
  int one = 1;
  (void)zmq_setsockopt(socket_.handle(), kZapEnforceDomainOption, &one, sizeof(one));
  bindWithRetry(socket_, endpoint);
  endpoint_ = socket_.get(zmq::sockopt::last_endpoint);
  logInfo("control: listening on " + endpoint_);
}

ControlServer::~ControlServer() = default;

std::optional<ControlServer::Incoming> ControlServer::receive(milliseconds timeout, Wakeup* wakeup) {
  auto deadline = Clock::now() + timeout;
  for (;;) {
    std::vector<zmq::pollitem_t> items = {{socket_.handle(), 0, ZMQ_POLLIN, 0}};
    if (wakeup) items.push_back({nullptr, wakeup->fd(), ZMQ_POLLIN, 0});
    pollSockets(items, remainingUntil(deadline));
    if (wakeup && (items[1].revents & ZMQ_POLLIN)) {
      wakeup->drain();
      if (!(items[0].revents & ZMQ_POLLIN)) return std::nullopt;
    }
    if (!(items[0].revents & ZMQ_POLLIN)) {
      if (Clock::now() >= deadline) return std::nullopt;
      continue;
    }
    std::vector<zmq::message_t> frames;
    if (!zmq::recv_multipart(socket_, std::back_inserter(frames), zmq::recv_flags::dontwait)) continue;
    if (frames.size() != 2) {
      // A DEALER sends one frame; the ROUTER prepends the routing id.
      logWarn("control: dropping a " + std::to_string(frames.size()) + "-part message (expected 2)");
      continue;
    }
    const char* userId = zmq_msg_gets(frames[1].handle(), "User-Id");
    if (userId == nullptr || *userId == '\0') {
      logWarn("control: dropping a frame without a ZAP User-Id (unauthenticated connection)");
      continue;
    }
    std::string host = userId;
    std::string routingId = frames[0].to_string();
    {
      std::lock_guard lock(peersMutex_);
      peers_[host] = Peer{routingId, Clock::now()};
    }
    ParsedMessage message(frames[1].to_string_view(), "host `" + host + "`");
    return Incoming{host, std::move(routingId), std::move(message)};
  }
}

void ControlServer::send(const std::string& host, capnp::MessageBuilder& message) {
  std::string routingId;
  {
    std::lock_guard lock(peersMutex_);
    auto it = peers_.find(host);
    if (it == peers_.end()) fail(ErrorKind::Disconnected, "control: host `" + host + "` has not connected");
    routingId = it->second.routingId;
  }
  zmq::message_t frame = messageToFrame(message);
  try {
    zmq::message_t id(routingId.data(), routingId.size());
    if (!socket_.send(id, zmq::send_flags::sndmore | zmq::send_flags::dontwait) ||
        !socket_.send(frame, zmq::send_flags::dontwait)) {
      fail(ErrorKind::Overloaded, "control: send queue to host `" + host + "` is full");
    }
  } catch (const zmq::error_t& e) {
    if (e.num() == EHOSTUNREACH) {
      std::lock_guard lock(peersMutex_);
      if (auto it = peers_.find(host); it != peers_.end() && it->second.routingId == routingId) peers_.erase(it);
      fail(ErrorKind::Disconnected, "control: host `" + host + "` is not connected (its connection is gone)");
    }
    failZmq(e, "control: send to host `" + host + "`");
  }
}

bool ControlServer::isConnected(const std::string& host) const {
  auto seen = lastSeen(host);
  return seen && Clock::now() - *seen <= livenessTimeout_;
}

std::optional<Clock::time_point> ControlServer::lastSeen(const std::string& host) const {
  std::lock_guard lock(peersMutex_);
  auto it = peers_.find(host);
  if (it == peers_.end()) return std::nullopt;
  return it->second.lastSeen;
}

void ControlServer::allow(const std::string& publicKey, const std::string& host) {
  checkCurveKey(publicKey, "public key of host `" + host + "`");
  zap_->allow(publicKey, host);
}

void ControlServer::revoke(const std::string& publicKey) { zap_->revoke(publicKey); }

uint64_t ControlServer::refusedCount() const { return zap_->refused(); }

// ---------------------------------------------------------------------------
// ControlClient

ControlClient::ControlClient(zmq::context_t& context, std::string endpoint, CurveKeyPair clientKeys,
                             std::string serverPublicKey)
    : endpoint_(std::move(endpoint)) {
  checkCurveKey(clientKeys.publicKey, "agent public key");
  checkCurveKey(clientKeys.secretKey, "agent secret key");
  checkCurveKey(serverPublicKey, "coordinator public key");

  socket_ = zmq::socket_t(context, zmq::socket_type::dealer);
  setCommonOptions(socket_);
  socket_.set(zmq::sockopt::reconnect_ivl, kReconnectIvlMs);
  socket_.set(zmq::sockopt::reconnect_ivl_max, kReconnectIvlMaxMs);
  socket_.set(zmq::sockopt::curve_serverkey, serverPublicKey);
  socket_.set(zmq::sockopt::curve_publickey, clientKeys.publicKey);
  socket_.set(zmq::sockopt::curve_secretkey, clientKeys.secretKey);

  // The monitor pair is connected before the DEALER connects, so the first
  // handshake's event is not lost.
  std::string monitorEndpoint = "inproc://migrate-control-monitor-" + randomHex(8);
  int events = ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_DISCONNECTED | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH |
               ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL;
  if (zmq_socket_monitor(socket_.handle(), monitorEndpoint.c_str(), events) != 0) {
    failErrno(zmq_errno(), "control: zmq_socket_monitor");
  }
  monitor_ = zmq::socket_t(context, zmq::socket_type::pair);
  monitor_.set(zmq::sockopt::linger, 0);
  monitor_.connect(monitorEndpoint);
  try {
    socket_.connect(endpoint_);
  } catch (const zmq::error_t& e) {
    failZmq(e, "control: connect to " + endpoint_);
  }
}

ControlClient::~ControlClient() {
  zmq_socket_monitor(socket_.handle(), nullptr, 0);
  monitor_.close();
  socket_.close();
}

void ControlClient::send(capnp::MessageBuilder& message) {
  zmq::message_t frame = messageToFrame(message);
  try {
    if (!socket_.send(frame, zmq::send_flags::dontwait)) {
      fail(ErrorKind::Overloaded, "control: send queue to coordinator at " + endpoint_ + " is full");
    }
  } catch (const zmq::error_t& e) {
    failZmq(e, "control: send to coordinator at " + endpoint_);
  }
}

std::optional<ParsedMessage> ControlClient::receive(milliseconds timeout, Wakeup* wakeup) {
  auto deadline = Clock::now() + timeout;
  for (;;) {
    std::vector<zmq::pollitem_t> items = {{socket_.handle(), 0, ZMQ_POLLIN, 0}, {monitor_.handle(), 0, ZMQ_POLLIN, 0}};
    if (wakeup) items.push_back({nullptr, wakeup->fd(), ZMQ_POLLIN, 0});
    pollSockets(items, remainingUntil(deadline));
    if (items[1].revents & ZMQ_POLLIN) pollEvents();
    if (wakeup && (items[2].revents & ZMQ_POLLIN)) {
      wakeup->drain();
      if (!(items[0].revents & ZMQ_POLLIN)) return std::nullopt;
    }
    if (items[0].revents & ZMQ_POLLIN) {
      std::vector<zmq::message_t> frames;
      if (zmq::recv_multipart(socket_, std::back_inserter(frames), zmq::recv_flags::dontwait)) {
        if (frames.size() != 1) {
          logWarn("control: dropping a " + std::to_string(frames.size()) + "-part message from the coordinator");
          continue;
        }
        return ParsedMessage(frames[0].to_string_view(), "coordinator at " + endpoint_);
      }
    }
    if (Clock::now() >= deadline) return std::nullopt;
  }
}

void ControlClient::pollEvents() {
  for (;;) {
    std::vector<zmq::message_t> frames;
    if (!zmq::recv_multipart(monitor_, std::back_inserter(frames), zmq::recv_flags::dontwait)) return;
    if (frames.empty() || frames[0].size() < 6) continue;
    uint16_t event;
    uint32_t value;
    std::memcpy(&event, frames[0].data(), sizeof(event));
    std::memcpy(&value, static_cast<const char*>(frames[0].data()) + sizeof(event), sizeof(value));
    switch (event) {
      case ZMQ_EVENT_HANDSHAKE_SUCCEEDED:
        connected_ = true;
        failureLogged_ = false;
        ++handshakes_;
        logInfo("control: connected to coordinator at " + endpoint_ +
                (handshakes_ > 1 ? " (reconnect " + std::to_string(handshakes_ - 1) + ")" : ""));
        if (onConnected_) onConnected_();
        break;
      case ZMQ_EVENT_DISCONNECTED:
        if (connected_) logWarn("control: lost coordinator at " + endpoint_ + "; reconnecting");
        connected_ = false;
        break;
      case ZMQ_EVENT_HANDSHAKE_FAILED_AUTH:
        // Logged once per outage: ZeroMQ keeps retrying with backoff.
        if (!failureLogged_) {
          logWarn("control: coordinator at " + endpoint_ + " refused this agent (ZAP status " + std::to_string(value) +
                  "): is the agent's public key on the coordinator's allow-list?");
        }
        failureLogged_ = true;
        break;
      case ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL:
      case ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL:
        if (!failureLogged_) {
          logWarn("control: CURVE handshake with " + endpoint_ +
                  " failed: is the pinned coordinator public key the right one?");
        }
        failureLogged_ = true;
        break;
      default:
        break;
    }
  }
}

}  // namespace migrate
