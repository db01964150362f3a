// The control channel: Cap'n Proto messages (schema/control.capnp), one per
// ZeroMQ frame, over CURVE.
//
// The coordinator binds a ROUTER (ControlServer); each agent connects a DEALER
// (ControlClient) that pins the coordinator's public key. The coordinator
// admits only agents whose public keys it was given: a ZAP handler checks the
// key and names the connection after the host it belongs to (ZAP User-Id),
// so every frame is attributed to an authenticated host, never to whatever a
// message claims.
//
// Threading: a ControlServer or ControlClient is used from one thread (ZeroMQ
// sockets are not thread-safe). The server's ZAP handler runs on its own
// thread; isConnected/lastSeen/allow/revoke/refusedCount may be called from
// any thread.
#pragma once

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <kj/array.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <zmq.hpp>

#include "common/error.h"
#include "common/fd.h"
#include "net/curve-keys.h"
#include "schema/control.capnp.h"

namespace migrate {

// Wakes a thread blocked in receive() (an eventfd it polls beside the
// socket): a reply queued by another thread leaves at once instead of at the
// end of the poll slice, which is downtime when the reply ends a freeze.
class Wakeup {
 public:
  Wakeup();
  void notify();  // any thread
  void drain();
  int fd() const { return fd_.get(); }

 private:
  Fd fd_;
};

// A frame larger than this is dropped by ZeroMQ before it reaches us
// (ZMQ_MAXMSGSIZE), bounding what an authenticated but confused peer can make
// us allocate.
constexpr int64_t kMaxControlFrameBytes = 64 << 20;

// ---------------------------------------------------------------------------
// Frames <-> messages

// The flat (unpacked, segment table first) encoding of `message`, ready to send.
zmq::message_t messageToFrame(capnp::MessageBuilder& message);

// A received message, parsed from an aligned copy of its frame: ZeroMQ gives
// no alignment guarantee and capnp reads words in place. Movable; the reader
// lives on the heap because capnp's arena points back at it.
class ParsedMessage {
 public:
  // Throws Error(InvalidInput) if the frame is not a well-formed message: the
  // whole message is traversed once here, so later accessors do not throw on
  // out-of-bounds pointers. `from` names the sender in the error ("host `x`").
  explicit ParsedMessage(std::string_view frame, std::string_view from = "peer");

  proto::Message::Reader root() const { return root_; }

 private:
  kj::Array<capnp::word> words_;
  std::unique_ptr<capnp::FlatArrayMessageReader> reader_;
  proto::Message::Reader root_;
};

// ---------------------------------------------------------------------------
// Errors across the wire

proto::ErrorKind errorKindToSchema(ErrorKind kind);
ErrorKind errorKindFromSchema(proto::ErrorKind kind);

// Marks `reply` failed with the kind and text of `error` (Failed for anything
// that is not an Error).
void setReplyError(proto::Reply::Builder reply, const std::exception& error);

// Throws Error(kind, "<what>: <message>") if `reply` is not ok.
void checkReply(proto::Reply::Reader reply, std::string_view what);

// ---------------------------------------------------------------------------
// Coordinator side

class ControlServer {
 public:
  struct Incoming {
    std::string host;       // From the ZAP User-Id: the authenticated sender.
    std::string routingId;  // ROUTER identity of the connection it came on.
    ParsedMessage message;
  };

  // Binds `endpoint` (tcp://198.19.0.1:7700; tcp://127.0.0.1:* for an
  // ephemeral port, see endpoint()). `allowed` maps Z85 public key -> host name.
  // Retries a bind that fails with EADDRINUSE for a couple of seconds, so a
  // restarted coordinator can take over its predecessor's port.
  // One ControlServer per context: the ZAP endpoint is per context.
  ControlServer(zmq::context_t& context, std::string endpoint, CurveKeyPair serverKeys,
                std::map<std::string, std::string> allowed,
                std::chrono::milliseconds livenessTimeout = std::chrono::seconds(10));
  ~ControlServer();
  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;

  // The bound endpoint with the port resolved (tcp://127.0.0.1:41234).
  const std::string& endpoint() const { return endpoint_; }

  // Next message from any host, or nullopt after `timeout`. A malformed frame
  // is consumed and throws Error(InvalidInput) naming the host; call again.
  std::optional<Incoming> receive(std::chrono::milliseconds timeout, Wakeup* wakeup = nullptr);

  // Sends to the connection `host` last sent from. Throws Error(Disconnected)
  // if the host never connected or its connection is gone, Error(Overloaded)
  // if its queue is full.
  void send(const std::string& host, capnp::MessageBuilder& message);

  // True if `host` sent anything within the liveness timeout (agents send
  // `heartbeat` periodically).
  bool isConnected(const std::string& host) const;
  std::optional<std::chrono::steady_clock::time_point> lastSeen(const std::string& host) const;

  // Changes the allow-list; affects new handshakes only.
  void allow(const std::string& publicKey, const std::string& host);
  void revoke(const std::string& publicKey);

  // Handshakes the ZAP handler refused (unknown key), since construction.
  uint64_t refusedCount() const;

 private:
  class ZapHandler;
  struct Peer {
    std::string routingId;
    std::chrono::steady_clock::time_point lastSeen;
  };

  std::unique_ptr<ZapHandler> zap_;  // Declared before socket_: outlives it.
  zmq::socket_t socket_;
  std::string endpoint_;
  std::chrono::milliseconds livenessTimeout_;
  mutable std::mutex peersMutex_;
  std::map<std::string, Peer> peers_;
};

// ---------------------------------------------------------------------------
// Agent side

class ControlClient {
 public:
  // Connects (asynchronously; ZeroMQ keeps reconnecting with backoff) to
  // `endpoint`, authenticating with `clientKeys` and accepting only a server
  // holding the secret key of `serverPublicKey`.
  ControlClient(zmq::context_t& context, std::string endpoint, CurveKeyPair clientKeys, std::string serverPublicKey);
  ~ControlClient();
  ControlClient(const ControlClient&) = delete;
  ControlClient& operator=(const ControlClient&) = delete;

  // Queues `message` for the coordinator. Messages queued while disconnected
  // go out after the next handshake. Throws Error(Overloaded) if the queue is
  // full (coordinator away for long).
  void send(capnp::MessageBuilder& message);

  // Next message from the coordinator, or nullopt after `timeout`. Connection
  // events are processed here too (see onConnected). A malformed frame is
  // consumed and throws Error(InvalidInput).
  std::optional<ParsedMessage> receive(std::chrono::milliseconds timeout, Wakeup* wakeup = nullptr);

  // Processes pending connection events without waiting for a message.
  void pollEvents();

  // Called (from receive/pollEvents, on the caller's thread) after every
  // successful CURVE handshake, first connection included: the agent sends
  // `register` from here, so a restarted coordinator learns it again.
  void onConnected(std::function<void()> callback) { onConnected_ = std::move(callback); }

  // Handshake succeeded and no disconnect was seen since.
  bool connected() const { return connected_; }
  // Successful handshakes so far; > 1 means at least one reconnect.
  uint64_t handshakes() const { return handshakes_; }

 private:
  zmq::socket_t socket_;
  zmq::socket_t monitor_;
  std::string endpoint_;
  std::function<void()> onConnected_;
  bool connected_ = false;
  bool failureLogged_ = false;
  uint64_t handshakes_ = 0;
};

}  // namespace migrate
