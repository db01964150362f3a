// The agent as a daemon: connects to the coordinator over the CURVE control
// channel, registers this host, sends heartbeats, and serves the coordinator's
// requests. Long requests (checkpoint-and-send, receive, restore) run on
// worker threads; only the main loop touches the ZeroMQ socket, so workers
// hand their replies and progress to it through an outbox.
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
#include "common/phase.h"
#include "common/worker-threads.h"
#include "net/tls-stream.h"
#include "net/control-channel.h"
#include "net/curve-keys.h"

namespace migrate {

class DataListener;

struct DaemonOptions {
  std::string coordinatorEndpoint;     // tcp://198.19.0.1:7700
  CurveKeyPair keys;                   // this agent's key pair
  std::string coordinatorPublicKey;    // pinned
  std::string dataAddress;             // where receivers bind and senders connect
  std::chrono::milliseconds heartbeatInterval{1000};
  int zstdLevel = 3;     // stream compression, unless the coordinator asks otherwise
  int zstdThreads = 2;   // zstd workers (0: compress on the streaming thread)
};

class AgentDaemon {
 public:
  AgentDaemon(Agent& agent, DaemonOptions options);
  ~AgentDaemon();

  // Serves until `stop` becomes true (SIGTERM). Containers keep running.
  void run(const std::atomic<bool>& stop);

 private:
  struct Receiver;  // one incoming migration stream (prepareReceive .. restore/abort)
  struct EndedReceiver {  // why a receiver went, for a restore that comes after
    std::string migrationId;
    std::string reason;
  };
  struct PostCopySource;  // a frozen container serving its pages (checkpointAndSend .. finishPostCopy)

  using Outgoing = std::unique_ptr<capnp::MallocMessageBuilder>;

  void sendRegister();
  void sendHeartbeat();
  void post(Outgoing message);  // any thread
  void postProgress(const std::string& migrationId, uint64_t requestId, Phase phase, uint64_t done,
                    uint64_t total, const std::exception* failure = nullptr);
  void dispatch(proto::Request::Reader request);
  Outgoing makeReply(uint64_t requestId, const std::function<void(proto::Reply::Builder)>& work,
                     const std::string& what);
  // Runs `work` on a worker thread; it fills the reply's payload or throws.
  void spawn(uint64_t requestId, std::function<void(proto::Reply::Builder)> work, std::string what);
  void fillRegister(proto::Register::Builder reg);

  void prepareReceive(uint64_t requestId, proto::PrepareReceive::Reader request, proto::Reply::Builder reply);
  void receiveBundle(const std::shared_ptr<Receiver>& r, std::shared_ptr<DataListener> listener,
                     std::chrono::milliseconds acceptTimeout, uint64_t requestId);
  void checkpointAndSend(uint64_t requestId, proto::CheckpointAndSend::Reader request, proto::Reply::Builder reply);
  void sendCheckpoint(uint64_t requestId, proto::CheckpointAndSend::Reader request, TlsStream& tls,
                      uint64_t checkpointNs, uint64_t connectNs, const std::shared_ptr<PostCopySource>& postCopy,
                      proto::Reply::Builder reply);
  void restore(proto::Restore::Reader request, proto::Reply::Builder reply);
  void abortReceive(const std::string& migrationId);
  void rollbackSource(const std::string& name, proto::Reply::Builder reply);
  void finishPostCopy(uint64_t requestId, const std::string& name, std::chrono::milliseconds timeout,
                      proto::Reply::Builder reply);
  void startPostCopyTarget(const std::shared_ptr<Receiver>& r);
  void servePages(const std::shared_ptr<PostCopySource>& p);
  std::shared_ptr<PostCopySource> postCopyFor(const std::string& name);
  void checkCpuInfo(capnp::Data::Reader cpuInfo);
  void receiveImage(proto::ReceiveImage::Reader request, proto::Reply::Builder reply);
  void sendImage(proto::SendImage::Reader request);
  std::shared_ptr<Receiver> receiverFor(const std::string& migrationId);
  // Takes `r` out of the map (its name is free again), noting why if it failed.
  void endReceiver(const std::shared_ptr<Receiver>& r, const std::string& failure);
  // A thread of receiver `r` (receive, post-copy pages); throws once stopping.
  void launchReceiverThread(const std::shared_ptr<Receiver>& r, std::function<void()> body);
  void reapReceiverThreads();  // joins those that finished

  Agent& agent_;
  DaemonOptions options_;
  std::string cpuInfo_;  // `criu cpuinfo dump` of this host, read once

  std::mutex outboxMutex_;
  std::deque<Outgoing> outbox_;
  Wakeup wakeup_;  // post() wakes run()'s receive

  WorkerThreads workers_;

  // The destructor began: receivers and image receives stop (their accepts
  // and streams poll it), and no receiver thread starts.
  std::atomic<bool> stopping_{false};

  // A receiver that fails or times out ends itself, so nobody waits to join
  // its threads: a finished one is joined by the next prepareReceive, the
  // rest by the destructor, each exactly once (as the coordinator's threads).
  std::mutex receiversMutex_;  // guards the five below
  std::map<std::string, std::shared_ptr<Receiver>> receivers_;  // live ones, by migration id
  std::deque<EndedReceiver> endedReceivers_;                     // the last few that failed
  std::map<uint64_t, std::thread> receiverThreads_;
  std::vector<uint64_t> finishedReceiverThreads_;
  uint64_t nextReceiverThread_ = 0;

  std::mutex postCopiesMutex_;
  std::map<std::string, std::shared_ptr<PostCopySource>> postCopies_;  // by container name
};

// `criu cpuinfo dump` of this host as bytes, and the check of another's.
std::string dumpCpuInfo();
void checkCpuInfoCompatible(const std::string& cpuInfoImage);

}  // namespace migrate
