// Real ZeroMQ over tcp://127.0.0.1 with ephemeral ports; no mocks.
#include "net/control-channel.h"

#include <capnp/message.h>
#include <sys/stat.h>

#include <catch2/catch.hpp>
#include <thread>
#include <zmq_addon.hpp>

#include "common/files.h"
#include "tests/support/wait.h"

using namespace migrate;
using namespace std::chrono_literals;

namespace {

constexpr const char* kAnyPort = "tcp://127.0.0.1:*";

// Drives the client's event processing until `done` or the timeout; the
// client is single-threaded, so its callbacks only run inside these calls.
bool pumpClientUntil(ControlClient& client, const std::function<bool()>& done, std::chrono::milliseconds timeout = 5s) {
  return migrate::test::waitUntil([&] {
    if (done()) return true;
    client.pollEvents();
    return done();
  }, timeout, 10ms);
}

void fillRegister(capnp::MessageBuilder& message, const std::string& hostName) {
  auto reg = message.initRoot<proto::Message>().initRegister();
  reg.setProtocolVersion(proto::PROTOCOL_VERSION);
  reg.setHostName(hostName);
  reg.setCriuVersion("4.2.1");
  static const kj::byte cpuInfo[] = {0x01, 0x02, 0xfe, 0xff};
  reg.setCpuInfo(kj::arrayPtr(cpuInfo, sizeof(cpuInfo)));
  reg.initCapacity().setCpus(2);
  auto containers = reg.initContainers(1);
  containers[0].setName("web");
  containers[0].setState(proto::ContainerState::RUNNING);
  containers[0].setIp("198.18.0.5");
}

void fillHeartbeat(capnp::MessageBuilder& message, uint32_t running) {
  message.initRoot<proto::Message>().initHeartbeat().initLoad().setRunningContainers(running);
}

struct Lab {
  zmq::context_t context;
  CurveKeyPair coordinatorKeys = generateCurveKeyPair();
  CurveKeyPair agentKeys = generateCurveKeyPair();
  std::map<std::string, std::string> allowed{{agentKeys.publicKey, "host1"}};
};

}  // namespace

TEST_CASE("control: register, request and reply round trip through CURVE, attributed by ZAP User-Id") {
  Lab lab;
  ControlServer server(lab.context, kAnyPort, lab.coordinatorKeys, lab.allowed);
  REQUIRE(server.endpoint().rfind("tcp://127.0.0.1:", 0) == 0);
  ControlClient client(lab.context, server.endpoint(), lab.agentKeys, lab.coordinatorKeys.publicKey);
  int connects = 0;
  client.onConnected([&] {
    ++connects;
    capnp::MallocMessageBuilder message;
    // The agent may claim any name; the server attributes by key.
    fillRegister(message, "i-claim-to-be-host9");
    client.send(message);
  });
  REQUIRE(pumpClientUntil(client, [&] { return client.connected(); }));
  CHECK(connects == 1);
  CHECK(client.handshakes() == 1);

  auto incoming = server.receive(5s);
  REQUIRE(incoming);
  CHECK(incoming->host == "host1");
  auto root = incoming->message.root();
  REQUIRE(root.isRegister());
  CHECK(root.getRegister().getHostName() == "i-claim-to-be-host9");
  CHECK(root.getRegister().getCpuInfo().size() == 4);
  CHECK(root.getRegister().getCpuInfo()[2] == 0xfe);
  CHECK(root.getRegister().getContainers()[0].getState() == proto::ContainerState::RUNNING);
  CHECK(server.isConnected("host1"));
  CHECK(server.lastSeen("host1").has_value());
  CHECK_FALSE(server.isConnected("host2"));

  {
    capnp::MallocMessageBuilder message;
    auto request = message.initRoot<proto::Message>().initRequest();
    request.setRequestId(42);
    request.setMigrationId("m-1");
    auto prepare = request.initPrepareReceive();
    prepare.setMigrationId("m-1");
    prepare.setContainerName("web");
    static const kj::byte psk[32] = {7};
    prepare.setPsk(kj::arrayPtr(psk, sizeof(psk)));
    prepare.initExpectedManifest().setIp("198.18.0.5");
    server.send("host1", message);
  }
  auto request = client.receive(5s);
  REQUIRE(request);
  REQUIRE(request->root().isRequest());
  auto req = request->root().getRequest();
  CHECK(req.getRequestId() == 42);
  REQUIRE(req.isPrepareReceive());
  CHECK(req.getPrepareReceive().getPsk().size() == 32);
  CHECK(req.getPrepareReceive().getExpectedManifest().getIp() == "198.18.0.5");

  {
    capnp::MallocMessageBuilder message;
    auto reply = message.initRoot<proto::Message>().initReply();
    reply.setRequestId(req.getRequestId());
    reply.setOk(true);
    reply.setPort(41234);
    client.send(message);
  }
  auto replied = server.receive(5s);
  REQUIRE(replied);
  CHECK(replied->host == "host1");
  REQUIRE(replied->message.root().isReply());
  auto reply = replied->message.root().getReply();
  CHECK(reply.getRequestId() == 42);
  CHECK(reply.getOk());
  REQUIRE(reply.isPort());
  CHECK(reply.getPort() == 41234);
  CHECK_NOTHROW(checkReply(reply, "prepareReceive on host1"));

  capnp::MallocMessageBuilder other;
  fillHeartbeat(other, 0);
  try {
    server.send("host2", other);
    FAIL("send to a host that never connected succeeded");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::Disconnected);
    CHECK(std::string(e.what()).find("host2") != std::string::npos);
  }
  CHECK(server.refusedCount() == 0);
}

TEST_CASE("control: a client with an unknown key is refused by the ZAP handler") {
  Lab lab;
  ControlServer server(lab.context, kAnyPort, lab.coordinatorKeys, lab.allowed);
  CurveKeyPair stranger = generateCurveKeyPair();
  ControlClient client(lab.context, server.endpoint(), stranger, lab.coordinatorKeys.publicKey);
  capnp::MallocMessageBuilder message;
  fillRegister(message, "host1");
  client.send(message);  // Queued; must never be delivered.

  auto deadline = std::chrono::steady_clock::now() + 5s;
  while (server.refusedCount() == 0 && std::chrono::steady_clock::now() < deadline) {
    REQUIRE_FALSE(server.receive(50ms));
    client.pollEvents();
  }
  CHECK(server.refusedCount() >= 1);
  CHECK_FALSE(server.receive(500ms));
  client.pollEvents();
  CHECK_FALSE(client.connected());
  CHECK(client.handshakes() == 0);
  CHECK_FALSE(server.isConnected("host1"));
}

TEST_CASE("control: a client pinning the wrong server key gets nothing through") {
  Lab lab;
  ControlServer server(lab.context, kAnyPort, lab.coordinatorKeys, lab.allowed);
  CurveKeyPair impostor = generateCurveKeyPair();
  ControlClient client(lab.context, server.endpoint(), lab.agentKeys, impostor.publicKey);
  capnp::MallocMessageBuilder message;
  fillRegister(message, "host1");
  client.send(message);

  CHECK_FALSE(server.receive(1500ms));
  client.pollEvents();
  CHECK(client.handshakes() == 0);
  CHECK_FALSE(client.connected());
  // The server could not even read the client's HELLO, so ZAP was never asked.
  CHECK(server.refusedCount() == 0);
}

TEST_CASE("control: the client reconnects to a restarted server and says so") {
  Lab lab;
  auto server = std::make_unique<ControlServer>(lab.context, kAnyPort, lab.coordinatorKeys, lab.allowed);
  std::string endpoint = server->endpoint();
  ControlClient client(lab.context, endpoint, lab.agentKeys, lab.coordinatorKeys.publicKey);
  int connects = 0;
  client.onConnected([&] {
    ++connects;
    capnp::MallocMessageBuilder message;
    fillRegister(message, "host1");
    client.send(message);
  });
  REQUIRE(pumpClientUntil(client, [&] { return connects == 1; }));
  auto first = server->receive(5s);
  REQUIRE(first);
  CHECK(first->message.root().isRegister());

  server.reset();
  REQUIRE(pumpClientUntil(client, [&] { return !client.connected(); }));

  server = std::make_unique<ControlServer>(lab.context, endpoint, lab.coordinatorKeys, lab.allowed);
  CHECK(server->endpoint() == endpoint);
  REQUIRE(pumpClientUntil(client, [&] { return connects == 2; }, 10s));
  CHECK(client.connected());
  CHECK(client.handshakes() == 2);

  // The re-register from the callback arrives, then a message sent after it.
  auto again = server->receive(5s);
  REQUIRE(again);
  CHECK(again->host == "host1");
  CHECK(again->message.root().isRegister());
  capnp::MallocMessageBuilder heartbeat;
  fillHeartbeat(heartbeat, 3);
  client.send(heartbeat);
  auto beat = server->receive(5s);
  REQUIRE(beat);
  REQUIRE(beat->message.root().isHeartbeat());
  CHECK(beat->message.root().getHeartbeat().getLoad().getRunningContainers() == 3);

  // And the new server can route to the new connection.
  capnp::MallocMessageBuilder request;
  request.initRoot<proto::Message>().initRequest().setListContainers();
  server->send("host1", request);
  auto got = client.receive(5s);
  REQUIRE(got);
  CHECK(got->root().getRequest().isListContainers());
}

TEST_CASE("control: malformed frames are InvalidInput") {
  auto expectInvalid = [](std::string_view frame) {
    try {
      ParsedMessage parsed(frame);
      FAIL("parsed a malformed frame");
    } catch (const Error& e) {
      CHECK(e.kind() == ErrorKind::InvalidInput);
      CHECK(std::string(e.what()).find("control: malformed") != std::string::npos);
    }
  };
  expectInvalid("");
  expectInvalid("garbage");                                         // Not whole words.
  expectInvalid(std::string("\xff\xff\xff\x7f\0\0\0\0", 8));        // Absurd segment count.
  expectInvalid(std::string("\0\0\0\0\x10\0\0\0\0\0\0\0\0\0\0\0", 16));  // Segment longer than the frame.

  capnp::MallocMessageBuilder message;
  fillRegister(message, "host1");
  zmq::message_t good = messageToFrame(message);
  std::string bytes = good.to_string();
  CHECK(ParsedMessage(bytes).root().getRegister().getHostName() == "host1");
  expectInvalid(std::string_view(bytes).substr(0, bytes.size() - 8));  // Truncated.
  expectInvalid(bytes + std::string(8, '\0'));                         // Trailing garbage.
  // Root pointer aimed far outside the segment.
  std::string wild = bytes;
  uint64_t farPointer = (uint64_t{0x100000} << 2) | (uint64_t{1} << 32);
  std::memcpy(wild.data() + 8, &farPointer, sizeof(farPointer));
  expectInvalid(wild);
}

TEST_CASE("control: a malformed frame from an authenticated host throws InvalidInput naming it, and the next one is fine") {
  Lab lab;
  ControlServer server(lab.context, kAnyPort, lab.coordinatorKeys, lab.allowed);
  // A raw DEALER with the agent's keys, to put arbitrary bytes on the wire.
  zmq::socket_t raw(lab.context, zmq::socket_type::dealer);
  raw.set(zmq::sockopt::linger, 0);
  raw.set(zmq::sockopt::curve_serverkey, lab.coordinatorKeys.publicKey);
  raw.set(zmq::sockopt::curve_publickey, lab.agentKeys.publicKey);
  raw.set(zmq::sockopt::curve_secretkey, lab.agentKeys.secretKey);
  raw.connect(server.endpoint());
  raw.send(zmq::buffer(std::string_view("not a capnp message!")));
  capnp::MallocMessageBuilder message;
  fillHeartbeat(message, 1);
  raw.send(messageToFrame(message), zmq::send_flags::none);

  try {
    server.receive(5s);
    FAIL("malformed frame was accepted");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::InvalidInput);
    CHECK(std::string(e.what()).find("`host1`") != std::string::npos);
  }
  auto next = server.receive(5s);
  REQUIRE(next);
  CHECK(next->host == "host1");
  CHECK(next->message.root().isHeartbeat());
}

TEST_CASE("control: error kinds survive the wire") {
  for (auto kind : {ErrorKind::Failed, ErrorKind::Overloaded, ErrorKind::Disconnected, ErrorKind::Unimplemented,
                    ErrorKind::InvalidInput, ErrorKind::NotFound, ErrorKind::Conflict, ErrorKind::Cancelled}) {
    CHECK(errorKindFromSchema(errorKindToSchema(kind)) == kind);
    capnp::MallocMessageBuilder message;
    auto reply = message.initRoot<proto::Message>().initReply();
    reply.setPort(1);
    setReplyError(reply, Error(kind, "criu: restore of `web` failed"));
    CHECK_FALSE(reply.getOk());
    CHECK(reply.isNone());
    try {
      checkReply(reply.asReader(), "restore on host2");
      FAIL("checkReply did not throw");
    } catch (const Error& e) {
      CHECK(e.kind() == kind);
      CHECK(std::string(e.what()) == "restore on host2: criu: restore of `web` failed");
    }
  }
  capnp::MallocMessageBuilder message;
  auto reply = message.initRoot<proto::Message>().initReply();
  setReplyError(reply, std::runtime_error("boom"));
  CHECK(reply.getErrorKind() == proto::ErrorKind::FAILED);
}

TEST_CASE("control: CURVE key pairs save, load and are checked") {
  TempDir dir(fs::temp_directory_path(), "curve-keys-test");
  CurveKeyPair keys = generateCurveKeyPair();
  CHECK(keys.publicKey.size() == 40);
  CHECK(keys.secretKey.size() == 40);
  saveKeyPair(dir.path(), "host1", keys);

  struct stat st;
  REQUIRE(::stat((dir.path() / "host1.key").c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  CurveKeyPair loaded = loadKeyPair(dir.path(), "host1");
  CHECK(loaded.publicKey == keys.publicKey);
  CHECK(loaded.secretKey == keys.secretKey);
  CHECK(loadPublicKey(dir.path() / "host1.pub") == keys.publicKey);

  // A .pub from another pair is caught at load time.
  saveKeyPair(dir.path(), "other", generateCurveKeyPair());
  fs::copy_file(dir.path() / "other.pub", dir.path() / "host1.pub", fs::copy_options::overwrite_existing);
  CHECK_THROWS_WITH(loadKeyPair(dir.path(), "host1"), Catch::Contains("does not belong"));

  // A secret readable by others is refused.
  ::chmod((dir.path() / "other.key").c_str(), 0644);
  CHECK_THROWS_WITH(loadKeyPair(dir.path(), "other"), Catch::Contains("chmod 600"));

  writeFileAtomic(dir.path() / "bad.pub", "tooshort\n");
  try {
    loadPublicKey(dir.path() / "bad.pub");
    FAIL("short key accepted");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::InvalidInput);
  }
  try {
    loadPublicKey(dir.path() / "missing.pub");
    FAIL("missing key accepted");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::NotFound);
  }
}
