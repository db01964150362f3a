// AgentLink over a real ControlServer on 127.0.0.1 with real CURVE clients
// speaking as the agents: what a call returns or throws (by kind), which
// replies it accepts, and what it does with registrations and progress.
#include "coordinator/agent-link.h"

#include <capnp/message.h>

#include <catch2/catch.hpp>
#include <deque>
#include <future>

#include "tests/support/wait.h"

using namespace migrate;
using namespace std::chrono_literals;
using migrate::test::holdsFor;
using migrate::test::waitUntil;

namespace {

// One agent's end of the control channel, on a thread of its own (a
// ControlClient is used from one thread): it keeps what it receives and
// sends what the test queues.
class RawAgent {
 public:
  RawAgent(zmq::context_t& context, const std::string& endpoint, CurveKeyPair keys, const std::string& serverKey)
      : client_(context, endpoint, std::move(keys), serverKey) {
    thread_ = std::thread([this] { loop(); });
  }
  ~RawAgent() {
    stop_ = true;
    thread_.join();
  }

  // Queues a message built by `fill` for the coordinator.
  void send(const std::function<void(proto::Message::Builder)>& fill) {
    auto message = std::make_unique<capnp::MallocMessageBuilder>();
    fill(message->initRoot<proto::Message>());
    std::lock_guard lock(mutex_);
    outbox_.push_back(std::move(message));
  }
  void sendRegister(const std::string& claimedName, uint32_t protocol = proto::PROTOCOL_VERSION) {
    send([&](proto::Message::Builder m) {
      auto reg = m.initRegister();
      reg.setHostName(claimedName);
      reg.setProtocolVersion(protocol);
      reg.setDataAddress("127.0.0.1");
    });
  }
  void sendReply(uint64_t requestId, std::optional<proto::ErrorKind> error = std::nullopt,
                 const std::string& message = "") {
    send([&](proto::Message::Builder m) {
      auto reply = m.initReply();
      reply.setRequestId(requestId);
      reply.setOk(!error);
      if (error) {
        reply.setErrorKind(*error);
        reply.setErrorMessage(message);
      }
      reply.setNone();
    });
  }

  // Requests received so far: {requestId, migrationId, timeoutMs, cancelled id (0 if not a cancel)}.
  struct Seen {
    uint64_t requestId;
    std::string migrationId;
    uint32_t timeoutMs;
    uint64_t cancels;
  };
  std::vector<Seen> requests() {
    std::lock_guard lock(mutex_);
    return requests_;
  }
  // Registered answers received: the host names they confirm.
  std::vector<std::string> registered() {
    std::lock_guard lock(mutex_);
    return registered_;
  }

 private:
  void loop() {
    while (!stop_) {
      std::deque<std::unique_ptr<capnp::MallocMessageBuilder>> batch;
      {
        std::lock_guard lock(mutex_);
        batch.swap(outbox_);
      }
      for (auto& m : batch) client_.send(*m);
      auto in = client_.receive(20ms);
      if (!in) continue;
      auto root = in->root();
      std::lock_guard lock(mutex_);
      if (root.isRegistered()) registered_.push_back(root.getRegistered().getHostName().cStr());
      if (root.isRequest()) {
        auto r = root.getRequest();
        requests_.push_back({r.getRequestId(), r.getMigrationId().cStr(), r.getTimeoutMs(),
                             r.isCancel() ? r.getCancel().getRequestId() : 0});
      }
    }
  }

  ControlClient client_;
  std::atomic<bool> stop_{false};
  std::mutex mutex_;  // guards outbox_, requests_ and registered_
  std::deque<std::unique_ptr<capnp::MallocMessageBuilder>> outbox_;
  std::vector<Seen> requests_;
  std::vector<std::string> registered_;
  std::thread thread_;
};

// A coordinator's link with hosts host1 and host2 allowed, neither connected yet.
struct Link {
  Link() {
    for (auto name : {"host1", "host2"}) {
      keys.emplace(name, generateCurveKeyPair());
      allowed.push_back({name, keys.at(name).publicKey, {}});
    }
    // The agents here send no heartbeats: an interval that outlasts each test
    // keeps a registered host up.
    registry = std::make_unique<HostRegistry>(allowed, 10s);
    server = std::make_unique<ControlServer>(context, "tcp://127.0.0.1:*", serverKeys, registry->keyToHost(), 2s);
    link = std::make_unique<AgentLink>(*server, *registry, "test-coordinator");
  }
  ~Link() {
    link->stop();
    agents.clear();
  }

  // Connects `name`'s agent and, unless told not to, registers it.
  RawAgent& connect(const std::string& name, bool registerIt = true) {
    auto& agent = *agents.emplace(name, std::make_unique<RawAgent>(context, server->endpoint(), keys.at(name),
                                                                    serverKeys.publicKey))
                       .first->second;
    if (registerIt) {
      agent.sendRegister(name);
      REQUIRE(waitUntil([&] { return registry->isUp(name) && !agent.registered().empty(); }, 10s));
    }
    return agent;
  }

  // The next request `agent` receives after it had seen `before`.
  RawAgent::Seen nextRequest(RawAgent& agent, size_t before) {
    REQUIRE(waitUntil([&] { return agent.requests().size() > before; }, 10s));
    return agent.requests()[before];
  }

  static void listContainers(proto::Request::Builder r) { r.setListContainers(); }

  zmq::context_t context;
  CurveKeyPair serverKeys = generateCurveKeyPair();
  std::map<std::string, CurveKeyPair> keys;
  std::vector<AllowedHost> allowed;
  std::unique_ptr<HostRegistry> registry;
  std::unique_ptr<ControlServer> server;
  std::unique_ptr<AgentLink> link;
  std::map<std::string, std::unique_ptr<RawAgent>> agents;
};

// What `call` throws: its kind and text; fails the test if it returns.
std::pair<ErrorKind, std::string> failureOf(std::future<ReplyMessage>& call) {
  try {
    call.get();
  } catch (const Error& e) {
    return {e.kind(), e.what()};
  }
  FAIL("the call returned a reply");
  return {};
}

}  // namespace

TEST_CASE("agent link answers a registration and carries a call and its reply or error kind", "[agent-link]") {
  Link t;
  std::vector<std::string> registeredHosts;
  std::mutex registeredMutex;
  t.link->onRegistered([&](const std::string& host) {
    std::lock_guard lock(registeredMutex);
    registeredHosts.push_back(host);
  });
  t.link->start();
  auto& agent = t.connect("host1");
  CHECK(agent.registered() == std::vector<std::string>{"host1"});
  {
    std::lock_guard lock(registeredMutex);
    CHECK(registeredHosts == std::vector<std::string>{"host1"});
  }

  auto ok = std::async(std::launch::async, [&] {
    return t.link->call({"host1", "listContainers", "m-1", 2s}, Link::listContainers);
  });
  auto seen = t.nextRequest(agent, 0);
  CHECK(seen.migrationId == "m-1");
  CHECK(seen.timeoutMs == 2000);
  agent.sendReply(seen.requestId);
  CHECK(ok.get().get().getOk());

  // The agent's error comes back with its kind, naming the host.
  auto refused = std::async(std::launch::async, [&] {
    return t.link->call({"host1", "listContainers", "", 2s}, Link::listContainers);
  });
  seen = t.nextRequest(agent, 1);
  agent.sendReply(seen.requestId, proto::ErrorKind::CONFLICT, "container `web` is busy");
  auto [kind, what] = failureOf(refused);
  CHECK(kind == ErrorKind::Conflict);
  CHECK(what == "host1: container `web` is busy");
}

TEST_CASE("agent link refuses a call to an unknown host or a host that is not up without sending it", "[agent-link]") {
  Link t;
  t.link->start();
  auto& unregistered = t.connect("host2", /*registerIt=*/false);
  try {
    t.link->call({"ghost", "listContainers", "", 1s}, Link::listContainers);
    FAIL("a call to an unknown host was sent");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::NotFound);
  }
  try {
    t.link->call({"host2", "listContainers", "", 1s}, Link::listContainers);
    FAIL("a call to an unregistered host was sent");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::Disconnected);
    CHECK_THAT(e.what(), Catch::Matchers::Contains("host is down"));
  }
  CHECK(unregistered.requests().empty());
}

TEST_CASE("agent link ignores a reply from a host the request was not sent to", "[agent-link]") {
  Link t;
  t.link->start();
  auto& host1 = t.connect("host1");
  auto& host2 = t.connect("host2");
  auto call = std::async(std::launch::async, [&] {
    return t.link->call({"host1", "listContainers", "", 10s}, Link::listContainers);
  });
  auto seen = t.nextRequest(host1, 0);
  // host2 answers host1's request first: a confused or hostile agent.
  host2.sendReply(seen.requestId);
  CHECK(holdsFor([&] { return call.wait_for(0s) == std::future_status::timeout; }, 500ms));
  host1.sendReply(seen.requestId, proto::ErrorKind::OVERLOADED, "too many migrations");
  CHECK(failureOf(call).first == ErrorKind::Overloaded);
}

TEST_CASE("agent link ends a call with disconnected at its timeout, at a re-registration and at stop",
          "[agent-link]") {
  Link t;
  t.link->start();
  auto& agent = t.connect("host1");

  auto silent = std::async(std::launch::async, [&] {
    return t.link->call({"host1", "restore", "", 1s}, Link::listContainers);
  });
  auto [kind, what] = failureOf(silent);
  CHECK(kind == ErrorKind::Disconnected);
  CHECK(what == "host1: no reply to restore within 1s");

  // A restarted agent registers again: it never saw the request.
  auto restarted = std::async(std::launch::async, [&] {
    return t.link->call({"host1", "restore", "", 10s}, Link::listContainers);
  });
  t.nextRequest(agent, 1);
  agent.sendRegister("host1");
  std::tie(kind, what) = failureOf(restarted);
  CHECK(kind == ErrorKind::Disconnected);
  CHECK(what == "host1: agent re-registered (restarted) during restore");

  // stop() ends what waits, and refuses what comes after.
  REQUIRE(waitUntil([&] { return agent.registered().size() == 2; }, 10s));
  auto waiting = std::async(std::launch::async, [&] {
    return t.link->call({"host1", "restore", "", 10s}, Link::listContainers);
  });
  t.nextRequest(agent, 2);
  t.link->stop();
  std::tie(kind, what) = failureOf(waiting);
  CHECK(kind == ErrorKind::Disconnected);
  CHECK(what == "host1: coordinator is shutting down");
  try {
    t.link->call({"host1", "restore", "", 1s}, Link::listContainers);
    FAIL("a call after stop() was sent");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::Disconnected);
  }
}

TEST_CASE("agent link refuses a registration that claims another name or protocol version", "[agent-link]") {
  Link t;
  t.link->start();
  auto& agent = t.connect("host1", /*registerIt=*/false);
  agent.sendRegister("host2");
  agent.sendRegister("host1", proto::PROTOCOL_VERSION + 1);
  // Neither is answered nor counts; a proper one after them is.
  CHECK(holdsFor([&] { return !t.registry->isUp("host1") && !t.registry->isUp("host2"); }, 500ms));
  CHECK(agent.registered().empty());
  agent.sendRegister("host1");
  CHECK(waitUntil([&] { return t.registry->isUp("host1"); }, 10s));
  CHECK_FALSE(t.registry->isUp("host2"));
  CHECK(waitUntil([&] { return agent.registered() == std::vector<std::string>{"host1"}; }, 10s));
}

TEST_CASE("agent link hands progress to its callback and sends a cancel naming the request", "[agent-link]") {
  Link t;
  std::mutex mutex;
  std::vector<ProgressUpdate> updates;
  t.link->onProgress([&](const ProgressUpdate& u) {
    std::lock_guard lock(mutex);
    updates.push_back(u);
  });
  t.link->start();
  auto& agent = t.connect("host1");
  agent.send([](proto::Message::Builder m) {
    auto p = m.initProgress();
    p.setMigrationId("m-7");
    p.setPhase("stream");
    p.setBytesDone(512);
    p.setBytesTotal(2048);
    p.setRequestId(9);
    p.setError("criu: dump failed");
    p.setErrorKind(proto::ErrorKind::OVERLOADED);
  });
  REQUIRE(waitUntil([&] {
    std::lock_guard lock(mutex);
    return !updates.empty();
  }, 10s));
  {
    std::lock_guard lock(mutex);
    auto& u = updates[0];
    CHECK(u.host == "host1");
    CHECK(u.migrationId == "m-7");
    CHECK(u.phase == Phase::Stream);
    CHECK(u.bytesDone == 512);
    CHECK(u.bytesTotal == 2048);
    CHECK(u.requestId == 9);
    CHECK(u.error == "criu: dump failed");
    CHECK(u.errorKind == ErrorKind::Overloaded);
  }

  t.link->cancel("host1", 42);
  auto seen = t.nextRequest(agent, 0);
  CHECK(seen.cancels == 42);
  CHECK(seen.requestId != 42);
}
