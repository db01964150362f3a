// The registry's rules on what hosts report: only registered hosts count,
// a report is bounded, and a report never takes a name the journal gives to
// another host; and the allow-list's optional signing key, and which key the
// registry hands targets (the enrolled one if any, else what the agent
// registered). Real ZeroMQ and capnp messages; scripted agents where a whole
// coordinator is needed.
#include "coordinator/host-registry.h"

#include <capnp/message.h>

#include <catch2/catch.hpp>
#include <thread>

#include "common/error.h"
#include "common/files.h"
#include "common/signing.h"
#include "coordinator/test-cluster.h"
#include "net/curve-keys.h"
#include "tests/support/wait.h"

using namespace migrate;
using namespace migrate::testing;
using namespace std::chrono_literals;
using Catch::Matchers::Contains;

namespace {

void fillContainers(capnp::List<proto::ContainerInfo>::Builder list, const std::string& prefix) {
  for (unsigned i = 0; i < list.size(); ++i) {
    list[i].setName(prefix + std::to_string(i));
    list[i].setState(proto::ContainerState::RUNNING);
  }
}

void fillRegister(proto::Register::Builder reg, const std::string& host, unsigned containers) {
  reg.setHostName(host);
  reg.setProtocolVersion(proto::PROTOCOL_VERSION);
  reg.setDataAddress("127.0.0.1");
  fillContainers(reg.initContainers(containers), "c");
}

bool eventually(const std::function<bool()>& condition) { return migrate::test::waitUntil(condition, 5s); }

size_t reportedBy(Cluster& cluster, const std::string& host) {
  auto state = cluster.registry->findIfExists(host);
  return state ? state->containers.size() : 0;
}

}  // namespace

TEST_CASE("registry: heartbeats from an allowed host that never registered are refused") {
  Cluster cluster(200ms, {"rogue"});
  cluster.start();
  ControlClient rogue(cluster.context, cluster.endpoint, cluster.allowedOnlyKeys.at("rogue"),
                      cluster.coordinatorKeys.publicKey);
  auto heartbeat = [&](unsigned containers) {
    capnp::MallocMessageBuilder message;
    auto hb = message.initRoot<proto::Message>().initHeartbeat();
    hb.initLoad().setMemAvailableBytes(64ull << 30);
    fillContainers(hb.initContainers(containers), "c");
    rogue.send(message);
  };
  // The key passes the ZAP allow-list: the handshake completes.
  REQUIRE(eventually([&] {
    rogue.pollEvents();
    return rogue.connected();
  }));
  for (int i = 0; i < 10; ++i) heartbeat(50);
  // Refused, however long it keeps at it.
  CHECK(migrate::test::holdsFor(
      [&] { return reportedBy(cluster, "rogue") == 0 && !cluster.registry->isUp("rogue"); }, 500ms));
  auto listed = cluster.coordinator->containers();
  CHECK(std::count_if(listed.begin(), listed.end(), [](auto& c) { return c["host"] == "rogue"; }) == 0);
  // Names it claimed stay free for a real host.
  auto run = cluster.coordinator->runContainer(RunContainerRequest{"host1", "c7", "test-image", {}, {}, true, false, ""});
  CHECK(run["host"] == "host1");

  // The same heartbeats count once the host registered: the refusal above is
  // the registration rule, not a broken message.
  capnp::MallocMessageBuilder message;
  fillRegister(message.initRoot<proto::Message>().initRegister(), "rogue", 1);
  rogue.send(message);
  REQUIRE(eventually([&] { return cluster.registry->isUp("rogue"); }));
  heartbeat(50);
  CHECK(eventually([&] { return reportedBy(cluster, "rogue") == 50; }));
}

TEST_CASE("registry: a report of more than kMaxContainersPerReport containers is refused whole") {
  HostRegistry registry({{"h", generateCurveKeyPair().publicKey, {}}}, 1s);
  {
    capnp::MallocMessageBuilder message;
    fillRegister(message.initRoot<proto::Register>(), "h", 2);
    registry.recordRegister("h", message.getRoot<proto::Register>());
  }
  REQUIRE(registry.get("h").containers.size() == 2);

  auto heartbeat = [&](unsigned containers) {
    capnp::MallocMessageBuilder message;
    fillContainers(message.initRoot<proto::Heartbeat>().initContainers(containers), "big");
    registry.recordHeartbeat("h", message.getRoot<proto::Heartbeat>());
  };
  CHECK_THROWS_WITH(heartbeat(kMaxContainersPerReport + 1),
                    Contains("heartbeat of `h`") && Contains("over the limit of 10000 per report"));
  CHECK(registry.get("h").containers.size() == 2);

  {
    capnp::MallocMessageBuilder message;
    fillRegister(message.initRoot<proto::Register>(), "h", kMaxContainersPerReport + 1);
    CHECK_THROWS_WITH(registry.recordRegister("h", message.getRoot<proto::Register>()),
                      Contains("registration of `h`") && Contains("10000"));
  }
  CHECK(registry.get("h").containers.size() == 2);
  CHECK(registry.session("h") == 1);

  heartbeat(kMaxContainersPerReport);
  CHECK(registry.get("h").containers.size() == kMaxContainersPerReport);
}

TEST_CASE("registry: a report never takes a name the journal gives to another host") {
  Cluster cluster(200ms);
  cluster.agent("host1").addContainer("web", "running");
  cluster.start();
  REQUIRE(eventually([&] { return cluster.journal->ownerIfExists("web") == std::optional<std::string>("host1"); }));

  // host2 claims the same name.
  cluster.agent("host2").addContainer("web", "running");
  REQUIRE(eventually([&] { return cluster.registry->get("host2").findContainer("web") != nullptr; }));

  auto evacuation = cluster.coordinator->evacuate(EvacuationRequest{"host2", {}, 0});
  CHECK(evacuation.migrationIds.empty());
  REQUIRE(evacuation.unplaced.size() == 1);
  CHECK(evacuation.unplaced[0].first == "web");
  CHECK_THAT(evacuation.unplaced[0].second, Contains("owned by host1"));

  // While its owner does not report it, requests about `web` are refused
  // rather than sent to the host that claims it.
  cluster.agent("host1").removeContainer("web");
  REQUIRE(eventually([&] { return cluster.registry->get("host1").findContainer("web") == nullptr; }));
  try {
    cluster.coordinator->startMigration(MigrationRequest{"web", "host3", {}});
    FAIL("a migration of `web` started");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::NotFound);
    CHECK_THAT(e.what(), Contains("belongs to host1"));
  }
  CHECK_THROWS_AS(cluster.coordinator->stopContainer("web"), Error);
  cluster.coordinator->waitIdle();
  auto host2 = cluster.seenNames("host2");
  CHECK(std::count(host2.begin(), host2.end(), "checkpointAndSend") == 0);
  CHECK(std::count(host2.begin(), host2.end(), "stopContainer") == 0);
  CHECK(cluster.journal->ownerIfExists("web") == std::optional<std::string>("host1"));

  // A new coordinator adopting host2's report keeps the journal's owner.
  cluster.restartCoordinator();
  REQUIRE(eventually([&] { return cluster.registry->get("host2").findContainer("web") != nullptr; }));
  CHECK(migrate::test::holdsFor(
      [&] { return cluster.journal->ownerIfExists("web") == std::optional<std::string>("host1"); }, 500ms));
}


namespace {

void registerWithSigningKey(HostRegistry& registry, const std::string& host, const std::string& signingKey) {
  capnp::MallocMessageBuilder message;
  auto reg = message.initRoot<proto::Register>();
  reg.setHostName(host);
  reg.setSigningKey(kj::arrayPtr(reinterpret_cast<const kj::byte*>(signingKey.data()), signingKey.size()));
  registry.recordRegister(host, reg.asReader());
}

}  // namespace

TEST_CASE("host registry: the allow-list may pin a host's signing key; a register does not replace it") {
  TempDir dir("/tmp", "registry-test");
  auto curve1 = generateCurveKeyPair(), curve2 = generateCurveKeyPair();
  SigningKey enrolled = SigningKey::generate(), other = SigningKey::generate();
  auto list = dir.path() / "agents";
  writeFileAtomic(list, "# hosts\nhost1 " + curve1.publicKey + " " + publicKeyText(enrolled.publicKey()) + "\nhost2 " +
                            curve2.publicKey + "\n");
  auto hosts = loadAllowList(list);
  REQUIRE(hosts.size() == 2);
  CHECK(hosts[0].signingKey == enrolled.publicKey());
  CHECK(hosts[1].signingKey.empty());

  HostRegistry registry(hosts, std::chrono::milliseconds(1000));
  registerWithSigningKey(registry, "host1", other.publicKey());
  registerWithSigningKey(registry, "host2", other.publicKey());
  CHECK(registry.get("host1").signingKey == enrolled.publicKey());
  CHECK(registry.get("host1").signingKeyEnrolled);
  CHECK(registry.get("host1").toJson()["signingKey"] == publicKeyText(enrolled.publicKey()));
  CHECK(registry.get("host2").signingKey == other.publicKey());
  CHECK_FALSE(registry.get("host2").signingKeyEnrolled);

  writeFileAtomic(list, "host1 " + curve1.publicKey + " ed25519:abcd\n");
  CHECK_THROWS_WITH(loadAllowList(list), Catch::Contains("line 1 signing key of `host1`"));
  writeFileAtomic(list, "host1 " + curve1.publicKey + " " + publicKeyText(enrolled.publicKey()) + " more\n");
  CHECK_THROWS_WITH(loadAllowList(list), Catch::Contains("expected `hostName publicKeyZ85 [ed25519:signingKey]`"));
}
