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

class AgentDaemon {
 public:
  AgentDaemon(Agent& agent, DaemonOptions options);
  ~AgentDaemon();

  // Serves until `stop` becomes true (SIGTERM). Containers keep running.
  void run(const std::atomic<bool>& stop);

 private:
  struct Receiver;  // one incoming migration stream (prepareReceive .. restore/abort)
  struct PostCopySource;  // a frozen container serving its pages (checkpointAndSend .. finishPostCopy)

  using Outgoing = std::unique_ptr<capnp::MallocMessageBuilder>;

  void sendRegister();
  void sendHeartbeat();
  void post(Outgoing message);  // any thread
  void postProgress(const std::string& migrationId, uint64_t requestId, const std::string& phase, uint64_t done,
                    uint64_t total, const std::exception* failure = nullptr);
  void dispatch(proto::Request::Reader request);
  Outgoing makeReply(uint64_t requestId, const std::function<void(proto::Reply::Builder)>& work,
                     const std::string& what);
  // Runs `work` on a worker thread; it fills the reply's payload or throws.
  void spawn(uint64_t requestId, std::function<void(proto::Reply::Builder)> work, std::string what);
  void fillRegister(proto::Register::Builder reg);

  void prepareReceive(uint64_t requestId, proto::PrepareReceive::Reader request, proto::Reply::Builder reply);
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

  Agent& agent_;
  DaemonOptions options_;
  std::string cpuInfo_;  // `criu cpuinfo dump` of this host, read once

  std::mutex outboxMutex_;
  std::deque<Outgoing> outbox_;
  Wakeup wakeup_;  // post() wakes run()'s receive

  std::mutex workersMutex_;
  std::vector<std::thread> workers_;

  std::mutex receiversMutex_;
  std::map<std::string, std::shared_ptr<Receiver>> receivers_;

  std::mutex postCopiesMutex_;
  std::map<std::string, std::shared_ptr<PostCopySource>> postCopies_;  // by container name
};

// `criu cpuinfo dump` of this host as bytes, and the check of another's.
std::string dumpCpuInfo();
void checkCpuInfoCompatible(const std::string& cpuInfoImage);

}  // namespace migrate
