// The coordinator's side of the control channel: owns the ControlServer, runs
// the one thread that touches its ZeroMQ socket, and turns the asynchronous
// Request/Reply/Progress traffic into blocking calls for migration threads.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "common/phase.h"
#include "coordinator/host-registry.h"
#include "net/control-channel.h"

namespace migrate {

struct ProgressUpdate {
  std::string host;
  std::string migrationId;
  std::optional<Phase> phase;  // empty: a name this build does not know
  uint64_t bytesDone = 0;
  uint64_t bytesTotal = 0;
  uint64_t requestId = 0;
  std::string error;  // the sender's side of this migration failed: why
  ErrorKind errorKind = ErrorKind::Failed;
};

// A successful reply, owning the message it lives in.
class ReplyMessage {
 public:
  explicit ReplyMessage(ParsedMessage message) : message_(std::move(message)) {}
  proto::Reply::Reader get() const { return message_.root().getReply(); }

 private:
  ParsedMessage message_;
};

struct CallSpec {
  std::string host;
  std::string what;         // "prepareReceive", for messages.
  std::string migrationId;  // Empty if none.
  std::chrono::milliseconds timeout = std::chrono::seconds(30);
  uint64_t requestId = 0;   // 0: a fresh one; else from newRequestId().
  // Another host whose loss (down) also ends the wait with Disconnected:
  // the reply is moot without it (finishPostCopy waits on the source while
  // the pages go to the target). Empty: none.
  std::string alsoWatch = {};
};

class AgentLink {
 public:
  using RequestFiller = std::function<void(proto::Request::Builder)>;

  AgentLink(ControlServer& server, HostRegistry& registry, std::string coordinatorVersion);
  ~AgentLink();
  AgentLink(const AgentLink&) = delete;
  AgentLink& operator=(const AgentLink&) = delete;

  // Called on the poll thread; must not block.
  void onProgress(std::function<void(const ProgressUpdate&)> callback) { onProgress_ = std::move(callback); }
  void onRegistered(std::function<void(const std::string& host)> callback) { onRegistered_ = std::move(callback); }

  // Starts the poll thread; set the callbacks first.
  void start();
  // Stops the poll thread; pending and later calls fail with Disconnected.
  void stop();

  uint64_t newRequestId() { return nextRequestId_++; }

  // Sends a Request to `spec.host` and blocks for its Reply. Throws
  // Error(<reply's kind>, "<host>: <message>") when the agent reports an
  // error, and Error(Disconnected) on timeout, when the host goes down or
  // re-registers (a new agent process never saw the request), or on stop().
  ReplyMessage call(const CallSpec& spec, const RequestFiller& fill);

  // Asks the agent to stop request `requestId`; does not wait for the answer.
  void cancel(const std::string& host, uint64_t requestId);

 private:
  struct Pending {
    std::string host;
    std::optional<ParsedMessage> reply;
    std::optional<Error> error;
  };
  struct Outgoing {
    std::string host;
    uint64_t requestId;  // 0: nobody waits for the reply.
    std::unique_ptr<capnp::MallocMessageBuilder> message;
  };

  void pollLoop();
  void sendQueued();
  void dispatch(ControlServer::Incoming& incoming);
  void handleRegister(const std::string& host, proto::Register::Reader reg);
  void handleReply(const std::string& host, ParsedMessage& message);
  void enqueue(Outgoing outgoing);
  void failPending(uint64_t requestId, Error error);

  ControlServer& server_;
  HostRegistry& registry_;
  std::string coordinatorVersion_;
  std::function<void(const ProgressUpdate&)> onProgress_;
  std::function<void(const std::string&)> onRegistered_;

  std::atomic<uint64_t> nextRequestId_{1};
  std::atomic<bool> stopping_{false};
  std::mutex mutex_;
  std::condition_variable changed_;
  std::map<uint64_t, Pending> pending_;
  std::deque<Outgoing> outbox_;
  Wakeup wakeup_;  // enqueue() wakes pollLoop()'s receive
  std::thread thread_;
};

}  // namespace migrate
