// Test support: a coordinator wired to real ZeroMQ on 127.0.0.1 and a real
// journal in a temp dir, with scripted agents built from real ControlClient
// sockets. The scripted agent is for testing the coordinator's decisions;
// the real agent's behaviour is tested end to end elsewhere.
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "agent/id-mapping.h"
#include "common/files.h"
#include "common/signing.h"
#include "coordinator/coordinator.h"

namespace migrate::testing {

std::string requestName(proto::Request::Reader request);

struct SeenRequest {
  std::string host;
  std::string name;
};

class FakeAgent {
 public:
  // Returns true if it filled `reply` (ok or error), false for the default: ok + none.
  using Handler = std::function<bool(proto::Request::Reader, proto::Reply::Builder)>;

  FakeAgent(zmq::context_t& context, const std::string& endpoint, const std::string& serverKey, std::string name,
            CurveKeyPair keys, std::vector<SeenRequest>& log, std::mutex& logMutex);
  ~FakeAgent();

  void setHandler(std::string request, Handler handler);
  // `idMapping`: its user namespace as it reports it (none: the host's).
  void addContainer(std::string name, std::string state, std::optional<IdMapping> idMapping = std::nullopt);
  void removeContainer(const std::string& name);
  void setSilent(bool silent) { silent_ = silent; }
  // Requests named `request` are logged but never answered (a long wait).
  void dropRequests(std::string request);
  // What postCopyStatus answers for any migration (default: absent, no
  // relay); resumePostCopy records its key and makes the relay `flowing`.
  void setRelay(proto::PostCopyRelayState state, std::string error = {}, uint32_t outstandingRequests = 0);
  proto::PostCopyRelayState relayState();
  std::vector<std::string> resumeKeys();
  bool registered() const { return registered_; }
  // The key it registers as its bundle signing key; set before Cluster::start().
  const SigningKey& signingKey() const { return signingKey_; }
  void setSigningKey(SigningKey key) { signingKey_ = std::move(key); }

 private:
  struct Container {
    std::string name, state;
    std::optional<IdMapping> idMapping;
  };

  void loop();
  void fillContainers(capnp::List<proto::ContainerInfo>::Builder list);

  zmq::context_t& context_;
  std::string endpoint_, serverKey_, name_;
  CurveKeyPair keys_;
  SigningKey signingKey_ = SigningKey::generate();
  std::vector<SeenRequest>& log_;
  std::mutex& logMutex_;
  std::mutex mutex_;
  std::map<std::string, Handler> handlers_;
  std::vector<Container> containers_;
  // What prepareReceive said each container being received maps to; a
  // restore makes it with that mapping, as the real agent does.
  std::map<std::string, std::optional<IdMapping>> receiving_;
  proto::PostCopyRelayState relayState_ = proto::PostCopyRelayState::ABSENT;  // guarded by mutex_, as the next two
  std::string relayError_;
  uint32_t relayOutstanding_ = 0;
  std::vector<std::string> resumeKeys_;
  std::set<std::string> dropped_;
  std::atomic<bool> stop_{false}, silent_{false}, registered_{false};
  std::thread thread_;
};

struct Cluster {
  // `allowedOnly`: hosts on the allow-list with keys in allowedOnlyKeys but
  // no scripted agent, for a test to speak as with its own ControlClient.
  explicit Cluster(std::chrono::milliseconds heartbeat = std::chrono::milliseconds(200),
                   std::vector<std::string> allowedOnly = {});
  ~Cluster();

  FakeAgent& agent(const std::string& name);
  // Starts coordinator and link; waits until every agent registered.
  void start();
  std::vector<SeenRequest> seen();
  std::vector<std::string> seenNames(const std::string& host);
  // The events the coordinator emitted for migration `id`, in order.
  std::vector<std::string> events(const std::string& id);
  void restartCoordinator();

  TempDir dir{"/tmp", "coordinator-test"};
  zmq::context_t context;
  CurveKeyPair coordinatorKeys = generateCurveKeyPair();
  std::map<std::string, CurveKeyPair> agentKeys;
  std::map<std::string, CurveKeyPair> allowedOnlyKeys;
  std::unique_ptr<Journal> journal;
  std::unique_ptr<HostRegistry> registry;
  std::unique_ptr<ControlServer> server;
  std::unique_ptr<AgentLink> link;
  std::unique_ptr<Coordinator> coordinator;
  std::mutex logMutex;
  std::vector<SeenRequest> log;
  std::vector<std::pair<std::string, std::string>> eventLog;  // migration id, event (guarded by logMutex)
  std::map<std::string, std::unique_ptr<FakeAgent>> agents;
  std::chrono::milliseconds heartbeat;
  std::string endpoint;

 private:
  void buildCoordinator();
};

}  // namespace migrate::testing
