// The agent as a daemon: connects to the coordinator over the CURVE control
// channel, registers this host, sends heartbeats, and serves the coordinator's
// requests. Every request runs on a worker thread, so the loop (and with it
// the heartbeats) never waits for one; only the loop touches the ZeroMQ
// socket, so workers hand their replies and progress to it through an
// outbox.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include <capnp/message.h>

#include "agent/agent.h"
#include "agent/post-copy-source.h"
#include "agent/progress-report.h"
#include "agent/receiver-set.h"
#include "common/worker-threads.h"
#include "net/tls-stream.h"
#include "net/control-channel.h"
#include "net/curve-keys.h"

namespace migrate {

struct DaemonOptions {
  std::string coordinatorEndpoint;     // tcp://198.19.0.1:7700
  CurveKeyPair keys;                   // this agent's key pair
  std::string coordinatorPublicKey;    // pinned
  std::string dataAddress;             // where receivers bind and senders connect
  std::chrono::milliseconds heartbeatInterval{1000};
  int zstdLevel = 3;     // stream compression, unless the coordinator asks otherwise
  int zstdThreads = 2;   // zstd workers (0: compress on the streaming thread)
};

// The loop and the dispatch. Each transfer is its own class, owning its
// threads and sockets: Receiver (receiver.h, kept in a ReceiverSet),
// CheckpointSender (checkpoint-sender.h), PostCopySource
// (post-copy-source.h), and the image transfer (image-transfer.h). The
// daemon only starts them on workers, finds them again by migration or
// container, and reports what they say.
class AgentDaemon {
 public:
  AgentDaemon(Agent& agent, DaemonOptions options);
  ~AgentDaemon();

  // Serves until `stop` becomes true (SIGTERM). Containers keep running.
  void run(const std::atomic<bool>& stop);

 private:
  using Outgoing = std::unique_ptr<capnp::MallocMessageBuilder>;

  // The control loop's side: only run() touches the ZeroMQ socket.
  void sendRegister();
  void sendHeartbeat();
  void post(Outgoing message);  // any thread
  void postProgress(const ProgressReport& report);
  ReportProgress progressReporter();
  void dispatch(proto::Request::Reader request);
  Outgoing makeReply(uint64_t requestId, const std::function<void(proto::Reply::Builder)>& work,
                     const std::string& what);
  // Runs `work` on a worker thread; it fills the reply's payload or throws.
  void spawn(uint64_t requestId, std::function<void(proto::Reply::Builder)> work, std::string what);
  void fillRegister(proto::Register::Builder reg);

  // Requests, each on a worker.
  void prepareReceive(uint64_t requestId, proto::PrepareReceive::Reader request, proto::Reply::Builder reply);
  void checkpointAndSend(uint64_t requestId, proto::CheckpointAndSend::Reader request,
                         const std::atomic<bool>& cancelled, proto::Reply::Builder reply);
  void restore(proto::Restore::Reader request, proto::Reply::Builder reply);
  void abortReceive(const std::string& migrationId);
  void rollbackSource(const std::string& name, const std::string& migrationId, proto::Reply::Builder reply);
  void finishAdoptedPostCopy(uint64_t requestId, const std::string& migrationId, const std::string& name,
                             const PageRelayHandle& relay, std::chrono::milliseconds timeout,
                             proto::Reply::Builder reply);
  void adoptTargetRelays();
  void fillPostCopyStatus(proto::PostCopyStatus::Builder out, const std::optional<PageRelayHandle>& relay);
  void finishPostCopy(uint64_t requestId, const std::string& migrationId, const std::string& name,
                      std::chrono::milliseconds timeout,
                      proto::Reply::Builder reply);
  void receiveImage(proto::ReceiveImage::Reader request, proto::Reply::Builder reply);
  void sendImage(proto::SendImage::Reader request);
  // Cancel: sets the flag of the request `requestId` if it is one that
  // stops on it (checkpointAndSend). Never blocks the loop.
  void cancel(uint64_t requestId);

  std::shared_ptr<PostCopySource> postCopyFor(const std::string& name);
  void forgetPostCopy(const std::shared_ptr<PostCopySource>& p);

  Agent& agent_;
  DaemonOptions options_;
  std::string cpuInfo_;  // `criu cpuinfo dump` of this host, read once

  std::mutex outboxMutex_;
  std::deque<Outgoing> outbox_;
  Wakeup wakeup_;  // post() wakes run()'s receive

  // The destructor began: image receives stop (their accepts and streams
  // poll it), and sends are cancelled.
  std::atomic<bool> stopping_{false};

  std::mutex postCopiesMutex_;
  std::map<std::string, std::shared_ptr<PostCopySource>> postCopies_;  // by container name

  // The checkpointAndSend requests in flight, by request id: registered by
  // the loop before their worker starts, so a cancel never misses one.
  struct Send {
    std::string containerName;
    std::shared_ptr<std::atomic<bool>> cancelled;
  };
  std::mutex sendsMutex_;
  std::condition_variable sendsChanged_;
  std::map<uint64_t, Send> sends_;
  std::shared_ptr<std::atomic<bool>> registerSend(uint64_t requestId, const std::string& containerName);
  void forgetSend(uint64_t requestId);
  // Cancels the sends of `name` and waits until none runs (rollbackSource).
  void cancelSendsOf(const std::string& name);

  // Destroyed first, in reverse: the workers are joined (a restore waiting
  // on a receiver returns once the receivers were stopped), then the
  // receivers (each joins its own threads); what they use is declared above.
  ReceiverSet receivers_;
  WorkerThreads workers_;
};

}  // namespace migrate
