// The migration state machine against scripted agents on real ZeroMQ sockets.
#include "coordinator/migration.h"

#include <catch2/catch.hpp>
#include <thread>

#include "agent/id-mapping-proto.h"
#include "coordinator/test-cluster.h"
#include "tests/support/wait.h"

using namespace migrate;
using namespace migrate::testing;
using namespace std::chrono_literals;
using nlohmann::json;

namespace {

// Index of the first `name` request `host` saw in the cluster-wide order; -1 if none.
int indexOf(const std::vector<SeenRequest>& seen, const std::string& host, const std::string& name) {
  for (size_t i = 0; i < seen.size(); ++i) {
    if (seen[i].host == host && seen[i].name == name) return static_cast<int>(i);
  }
  return -1;
}

bool waitFor(const std::function<bool()>& done, std::chrono::milliseconds timeout = 10s) {
  return migrate::test::waitUntil(done, timeout);
}

bool contains(const std::vector<std::string>& names, const std::string& name) {
  return std::find(names.begin(), names.end(), name) != names.end();
}

// The target's abortReceive came first, then the source's rollbackSource:
// never two copies running.
void checkTargetAbortedFirst(Cluster& cluster) {
  auto seen = cluster.seen();
  int abort = indexOf(seen, "host2", "abortReceive");
  int rollback = indexOf(seen, "host1", "rollbackSource");
  REQUIRE(abort >= 0);
  REQUIRE(rollback >= 0);
  CHECK(abort < rollback);
}

}  // namespace

TEST_CASE("migration: success records the new owner before commitSource is sent") {
  Cluster cluster(300ms);
  cluster.agent("host1").addContainer("web", "running");
  std::optional<std::string> ownerAtCommit;
  cluster.agent("host1").setHandler("commitSource", [&](proto::Request::Reader, proto::Reply::Builder) {
    ownerAtCommit = cluster.journal->ownerIfExists("web");
    return false;
  });
  cluster.start();

  std::string id = cluster.coordinator->startMigration({"web", "host2", {}});
  cluster.coordinator->waitIdle();
  auto record = cluster.journal->get(id);
  INFO(record.error);
  CHECK(record.state == MigrationState::Succeeded);
  CHECK(record.source == "host1");
  REQUIRE(ownerAtCommit);
  CHECK(*ownerAtCommit == "host2");
  CHECK(cluster.journal->ownerIfExists("web") == std::optional<std::string>("host2"));

  auto seen = cluster.seen();
  int prepare = indexOf(seen, "host2", "prepareReceive");
  int checkpoint = indexOf(seen, "host1", "checkpointAndSend");
  int restore = indexOf(seen, "host2", "restore");
  int commit = indexOf(seen, "host1", "commitSource");
  CHECK(indexOf(seen, "host2", "checkCpuInfo") >= 0);
  CHECK(indexOf(seen, "host1", "sendImage") == -1);  // host2 has the image
  CHECK(prepare >= 0);
  CHECK(prepare < checkpoint);
  CHECK(checkpoint < restore);
  CHECK(restore < commit);
  CHECK(indexOf(seen, "host1", "rollbackSource") == -1);

  auto json = cluster.coordinator->migration(id);
  CHECK(json["state"] == "succeeded");
  CHECK(json["stats"]["bytesWire"] == 400);
  CHECK(json["stats"]["compressionRatio"].get<double>() == Approx(2.5));
  CHECK(json["stats"]["downtimeMs"].get<double>() >= 0);
  for (auto phase : {"precheck", "prepare", "checkpoint", "stream", "restore", "commit"}) {
    CHECK(json["stats"]["phases"].contains(phase));
  }
  CHECK(json["finishedAt"].is_string());
}

TEST_CASE("migration: restore failing on the target aborts the target, then restores the source") {
  Cluster cluster(300ms);
  cluster.agent("host1").addContainer("web", "running");
  cluster.agent("host2").setHandler("restore", [](proto::Request::Reader, proto::Reply::Builder reply) {
    reply.setOk(false);
    reply.setErrorKind(proto::ErrorKind::FAILED);
    reply.setErrorMessage("criu: restore of `web` failed");
    return true;
  });
  cluster.start();

  std::string id = cluster.coordinator->startMigration({"web", "host2", {}});
  cluster.coordinator->waitIdle();
  auto record = cluster.journal->get(id);
  CHECK(record.state == MigrationState::RolledBack);
  CHECK(record.errorKind == "failed");
  CHECK(record.error.find("host2: criu: restore of `web` failed") != std::string::npos);
  CHECK(cluster.journal->ownerIfExists("web") == std::optional<std::string>("host1"));

  auto seen = cluster.seen();
  int abort = indexOf(seen, "host2", "abortReceive");
  int rollback = indexOf(seen, "host1", "rollbackSource");
  REQUIRE(abort >= 0);
  REQUIRE(rollback >= 0);
  CHECK(abort < rollback);
  CHECK(indexOf(seen, "host1", "commitSource") == -1);
}

TEST_CASE("migration: precheck refusals fail without touching either host") {
  Cluster cluster(300ms);
  cluster.agent("host1").addContainer("web", "running");
  cluster.agent("host1").addContainer("api", "running");
  cluster.agent("host2").addContainer("api", "stopped");
  cluster.agent("host2").setHandler("checkCpuInfo", [](proto::Request::Reader, proto::Reply::Builder reply) {
    reply.setOk(false);
    reply.setErrorKind(proto::ErrorKind::CONFLICT);
    reply.setErrorMessage("criu: cpuinfo check failed: missing avx512");
    return true;
  });
  cluster.start();

  // The target has a container with the same name.
  std::string nameClash = cluster.coordinator->startMigration({"api", "host2", {}});
  cluster.coordinator->waitIdle();
  auto clash = cluster.journal->get(nameClash);
  CHECK(clash.state == MigrationState::Failed);
  CHECK(clash.errorKind == "conflict");

  // The target's CPU cannot run what the source dumps.
  std::string cpu = cluster.coordinator->startMigration({"web", "host2", {}});
  cluster.coordinator->waitIdle();
  auto cpuRecord = cluster.journal->get(cpu);
  CHECK(cpuRecord.state == MigrationState::Failed);
  CHECK(cpuRecord.errorKind == "conflict");
  CHECK(cpuRecord.error.find("avx512") != std::string::npos);

  for (auto& s : cluster.seen()) {
    CHECK(s.name != "prepareReceive");
    CHECK(s.name != "checkpointAndSend");
    CHECK(s.name != "abortReceive");
    CHECK(s.name != "rollbackSource");
  }

  // Unknown containers and hosts are refused before a migration is journalled.
  CHECK_THROWS_AS(cluster.coordinator->startMigration({"ghost", "host2", {}}), Error);
  try {
    cluster.coordinator->startMigration({"web", "host9", {}});
    FAIL("no error");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::NotFound);
  }
}

TEST_CASE("migration: one migration per container at a time, and a cancel before the checkpoint touches nothing more") {
  // The precheck waits in listImages until the test has cancelled.
  std::atomic<bool> holdPrecheck{true};
  Cluster cluster(300ms);
  cluster.agent("host1").addContainer("web", "running");
  cluster.agent("host2").setHandler("listImages", [&](proto::Request::Reader, proto::Reply::Builder reply) {
    waitFor([&] { return !holdPrecheck.load(); });
    reply.initImages(1)[0].setDigest("sha256:abc");
    return true;
  });
  cluster.start();

  std::string id = cluster.coordinator->startMigration({"web", "host2", {}});
  try {
    cluster.coordinator->startMigration({"web", "host3", {}});
    FAIL("a second migration of `web` was accepted");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::Conflict);
  }
  cluster.coordinator->cancelMigration(id);
  holdPrecheck = false;
  cluster.coordinator->waitIdle();
  CHECK(cluster.journal->get(id).state == MigrationState::Cancelled);
  CHECK(cluster.journal->get(id).errorKind == "cancelled");
  CHECK_FALSE(contains(cluster.seenNames("host2"), "prepareReceive"));
  try {
    cluster.coordinator->cancelMigration(id);
    FAIL("cancelling a finished migration succeeded");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::Conflict);
  }
}

TEST_CASE("migration: a target lost during restore blocks the source's restore until the target confirms the abort") {
  Cluster cluster(200ms);
  cluster.agent("host1").addContainer("web", "running");
  std::atomic<bool> restoreSeen{false};
  cluster.agent("host2").setHandler("restore", [&](proto::Request::Reader, proto::Reply::Builder) {
    restoreSeen = true;
    return false;
  });
  cluster.start();
  // The target goes silent right when it gets restore: no reply, no heartbeat.
  cluster.agent("host2").setHandler("prepareReceive", [&](proto::Request::Reader, proto::Reply::Builder reply) {
    reply.setPort(40000);
    return true;
  });
  cluster.agent("host1").setHandler("checkpointAndSend", [&](proto::Request::Reader, proto::Reply::Builder reply) {
    cluster.agent("host2").setSilent(true);
    reply.initStats().setSha256("aa");
    return true;
  });

  std::string id = cluster.coordinator->startMigration({"web", "host2", {}});
  REQUIRE(waitFor([&] { return cluster.journal->get(id).state == MigrationState::RollingBack; }));
  cluster.coordinator->waitIdle();
  auto waiting = cluster.journal->get(id);
  CHECK(waiting.state == MigrationState::RollingBack);
  CHECK(waiting.error.find("waits for host2") != std::string::npos);
  CHECK_FALSE(contains(cluster.seenNames("host1"), "rollbackSource"));

  // The target comes back: the retry loop aborts it first, then restores the source.
  cluster.agent("host2").setSilent(false);
  REQUIRE(waitFor([&] { return cluster.journal->get(id).state == MigrationState::RolledBack; }));
  auto seen = cluster.seen();
  int abort = indexOf(seen, "host2", "abortReceive");
  int rollback = indexOf(seen, "host1", "rollbackSource");
  REQUIRE(abort >= 0);
  CHECK(abort < rollback);
  // The retry reports the cause the first attempt journalled, not its "waits for" tail.
  auto rolledBack = cluster.journal->get(id);
  INFO(rolledBack.error);
  CHECK_FALSE(rolledBack.error.empty());
  CHECK(rolledBack.error.find("waits for") == std::string::npos);
  CHECK(waiting.error.rfind(rolledBack.error + "; rollback waits for host2", 0) == 0);
  CHECK(rolledBack.errorKind == waiting.errorKind);
}

TEST_CASE("migration: a cancel during the checkpoint rolls back, and its kind says cancelled") {
  Cluster cluster(300ms);
  cluster.agent("host1").addContainer("web", "running");
  std::atomic<bool> checkpointing{false}, released{false};
  cluster.agent("host1").setHandler("checkpointAndSend", [&](proto::Request::Reader, proto::Reply::Builder) {
    checkpointing = true;
    waitFor([&] { return released.load(); });
    return false;  // the default reply: checkpointed and sent
  });
  cluster.start();

  std::string id = cluster.coordinator->startMigration({"web", "host2", {}});
  REQUIRE(waitFor([&] { return checkpointing.load(); }));
  cluster.coordinator->cancelMigration(id);
  released = true;
  cluster.coordinator->waitIdle();
  auto record = cluster.journal->get(id);
  INFO(record.error);
  CHECK(record.state == MigrationState::RolledBack);
  CHECK(record.errorKind == "cancelled");
  CHECK(record.error == "cancelled by request");
  CHECK(contains(cluster.seenNames("host2"), "abortReceive"));
  CHECK(contains(cluster.seenNames("host1"), "rollbackSource"));
  CHECK_FALSE(contains(cluster.seenNames("host2"), "restore"));
}

TEST_CASE("migration: options read alike from a request body and from the journal") {
  auto defaults = MigrationOptions::fromJson(json::object());
  CHECK(defaults.tcpEstablished);
  CHECK_FALSE(defaults.leaveRunning);
  CHECK_FALSE(defaults.postCopy);
  CHECK(MigrationOptions::fromJson(json()).tcpEstablished);  // a record journalled without options

  auto body = MigrationOptions::fromJson(
      {{"container", "web"}, {"target", "host2"}, {"postCopy", true}, {"tcpEstablished", nullptr}});
  CHECK(body.postCopy);
  CHECK(body.tcpEstablished);
  auto journalled = MigrationOptions::fromJson(body.toJson());
  CHECK(journalled.postCopy);
  CHECK(journalled.tcpEstablished);
  CHECK_FALSE(journalled.leaveRunning);

  try {
    MigrationOptions::fromJson({{"leaveRunning", "yes"}});
    FAIL("a string was read as a bool");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::InvalidInput);
    CHECK_THAT(e.what(), Catch::Contains("leaveRunning"));
  }

  // A downtime budget: whole milliseconds, 1 ms to 24 h, kept through the journal.
  CHECK(MigrationOptions::fromJson(json::parse(R"({"maxDowntimeMs": 500})")).maxDowntimeMs == 500);
  CHECK(MigrationOptions::fromJson(MigrationOptions::fromJson({{"maxDowntimeMs", 500}}).toJson()).maxDowntimeMs == 500);
  CHECK_FALSE(MigrationOptions::fromJson(json::object()).toJson().contains("maxDowntimeMs"));
  for (const char* bad : {"-1", "0", "1.5", "\"500ms\"", "86400001"}) {
    INFO(bad);
    try {
      MigrationOptions::fromJson(json::parse(std::string(R"({"maxDowntimeMs": )") + bad + "}"));
      FAIL("accepted");
    } catch (const Error& e) {
      CHECK(e.kind() == ErrorKind::InvalidInput);
      CHECK_THAT(e.what(), Catch::Contains("maxDowntimeMs"));
    }
  }
}

TEST_CASE("migration: a restarted coordinator finishes committed migrations and rolls back the rest") {
  Cluster cluster(300ms);
  cluster.agent("host1").addContainer("web", "checkpointed");
  cluster.agent("host1").addContainer("db", "checkpointed");
  cluster.agent("host2").addContainer("web", "running");

  auto journalled = [](std::string id, std::string container, MigrationState state) {
    MigrationRecord r;
    r.id = std::move(id);
    r.container = std::move(container);
    r.source = "host1";
    r.target = "host2";
    r.state = state;
    return r;
  };
  // `web` had reached the commit point; `db` was being restored on the target.
  cluster.journal->insert(journalled("m-web", "web", MigrationState::Restoring));
  cluster.journal->recordCommit("m-web", "web", "host2");
  cluster.journal->insert(journalled("m-db", "db", MigrationState::Restoring));
  cluster.journal->setOwner("db", "host1");
  cluster.journal->insert(journalled("m-new", "api", MigrationState::Prechecking));

  cluster.start();
  REQUIRE(waitFor([&] {
    return cluster.journal->get("m-web").state == MigrationState::Succeeded &&
           cluster.journal->get("m-db").state == MigrationState::RolledBack;
  }));
  CHECK(cluster.journal->get("m-new").state == MigrationState::Failed);
  CHECK(cluster.journal->ownerIfExists("web") == std::optional<std::string>("host2"));
  CHECK(cluster.journal->ownerIfExists("db") == std::optional<std::string>("host1"));

  auto seen = cluster.seen();
  CHECK(indexOf(seen, "host1", "commitSource") >= 0);
  int abort = indexOf(seen, "host2", "abortReceive");
  int rollback = indexOf(seen, "host1", "rollbackSource");
  REQUIRE(abort >= 0);
  CHECK(abort < rollback);
  // Nothing restores `web` on the source again.
  for (auto& s : seen) CHECK_FALSE((s.host == "host2" && s.name == "commitSource"));
}

TEST_CASE("migration: evacuation moves every running container, at most N at a time") {
  Cluster cluster(300ms);
  for (auto name : {"a", "b", "c"}) cluster.agent("host1").addContainer(name, "running");
  cluster.agent("host1").addContainer("stopped-one", "stopped");
  std::atomic<int> inFlight{0}, maxInFlight{0};
  cluster.agent("host1").setHandler("checkpointAndSend", [&](proto::Request::Reader, proto::Reply::Builder reply) {
    // Answered inline by the single agent thread, so count prepared receivers instead.
    reply.initStats().setSha256("aa");
    return true;
  });
  for (auto target : {"host2", "host3"}) {
    cluster.agent(target).setHandler("prepareReceive", [&](proto::Request::Reader, proto::Reply::Builder reply) {
      int now = ++inFlight;
      int seenMax = maxInFlight;
      while (now > seenMax && !maxInFlight.compare_exchange_weak(seenMax, now)) {
      }
      reply.setPort(40000);
      return true;
    });
    cluster.agent(target).setHandler("restore", [&](proto::Request::Reader request, proto::Reply::Builder reply) {
      --inFlight;
      reply.initRestored().getContainer().setName(request.getRestore().getContainerName());
      return true;
    });
  }
  cluster.start();
  auto result = cluster.coordinator->evacuate({"host1", {}, 1});
  CHECK(result.migrationIds.size() == 3);
  CHECK(result.unplaced.empty());
  cluster.coordinator->waitIdle();
  for (auto& id : result.migrationIds) {
    auto r = cluster.journal->get(id);
    INFO(r.error);
    CHECK(r.state == MigrationState::Succeeded);
    CHECK(r.target != "host1");
  }
  CHECK(maxInFlight == 1);
}

TEST_CASE("migration: the target gets the source's registered signing key; a bundle signed by another rolls back") {
  Cluster cluster(300ms);
  cluster.agent("host1").addContainer("web", "running");
  // What the source "streams": a statement and its signature. The target
  // checks it as the real agent does, against the key it was handed.
  const std::string statement = "bundle of `web` from host1";
  std::mutex mutex;
  std::string handedKey, sentSignature;
  SigningKey impostor = SigningKey::generate();
  bool signWithImpostor = true;
  cluster.agent("host2").setHandler("prepareReceive", [&](proto::Request::Reader request, proto::Reply::Builder reply) {
    auto key = request.getPrepareReceive().getSourceSigningKey();
    std::lock_guard lock(mutex);
    handedKey.assign(reinterpret_cast<const char*>(key.begin()), key.size());
    reply.setPort(40000);
    return true;
  });
  cluster.agent("host1").setHandler("checkpointAndSend", [&](proto::Request::Reader, proto::Reply::Builder reply) {
    std::lock_guard lock(mutex);
    sentSignature = signWithImpostor ? impostor.sign(statement) : cluster.agent("host1").signingKey().sign(statement);
    reply.initStats().setSha256("aa");
    return true;
  });
  cluster.agent("host2").setHandler("restore", [&](proto::Request::Reader request, proto::Reply::Builder reply) {
    std::lock_guard lock(mutex);
    if (!verifySignature(handedKey, statement, sentSignature)) {
      reply.setOk(false);
      reply.setErrorKind(proto::ErrorKind::INVALID_INPUT);
      reply.setErrorMessage("bundle signature: signed by unknown key; the coordinator says `host1` signs with " +
                            publicKeyText(handedKey));
      return true;
    }
    reply.initRestored().getContainer().setName(request.getRestore().getContainerName());
    return true;
  });
  cluster.start();

  std::string refused = cluster.coordinator->startMigration({"web", "host2", {}});
  cluster.coordinator->waitIdle();
  auto record = cluster.journal->get(refused);
  INFO(record.error);
  CHECK(handedKey == cluster.agent("host1").signingKey().publicKey());
  CHECK(record.state == MigrationState::RolledBack);
  CHECK(record.errorKind == "invalid-input");
  CHECK(record.error.find("signature") != std::string::npos);
  CHECK(cluster.journal->ownerIfExists("web") == std::optional<std::string>("host1"));
  auto seen = cluster.seen();
  int abort = indexOf(seen, "host2", "abortReceive");
  int rollback = indexOf(seen, "host1", "rollbackSource");
  REQUIRE(abort >= 0);
  CHECK(abort < rollback);
  int rollbacks = 0;
  for (auto& s : seen) rollbacks += s.host == "host1" && s.name == "rollbackSource";
  CHECK(rollbacks == 1);
  CHECK(indexOf(seen, "host1", "commitSource") == -1);

  // Signed by the key host1 registered, the same migration goes through.
  {
    std::lock_guard lock(mutex);
    signWithImpostor = false;
  }
  std::string accepted = cluster.coordinator->startMigration({"web", "host2", {}});
  cluster.coordinator->waitIdle();
  INFO(cluster.journal->get(accepted).error);
  CHECK(cluster.journal->get(accepted).state == MigrationState::Succeeded);
}

TEST_CASE("migration: the target is asked for the source's user namespace mapping, and one taken there is refused in precheck") {
  const IdMapping web{1u << 30, kIdMappingSize};
  Cluster cluster(300ms);
  cluster.agent("host1").addContainer("web", "running", web);
  cluster.agent("host1").addContainer("root-one", "running");  // the host's user namespace
  // Half of `db`'s ids are `web`'s.
  cluster.agent("host2").addContainer("db", "running", IdMapping{web.hostId + kIdMappingSize / 2, kIdMappingSize});
  cluster.agent("host3").addContainer("cache", "running", IdMapping{web.hostId + kIdMappingSize, kIdMappingSize});
  std::mutex mutex;
  std::map<std::string, std::optional<IdMapping>> asked;  // container -> expectedManifest.idMapping
  cluster.agent("host3").setHandler("prepareReceive", [&](proto::Request::Reader request, proto::Reply::Builder) {
    auto prepare = request.getPrepareReceive();
    std::lock_guard lock(mutex);
    asked[prepare.getContainerName().cStr()] = idMappingFromProto(prepare.getExpectedManifest().getIdMapping());
    return false;  // then the scripted agent's own: it restores the container with that mapping
  });
  cluster.start();

  std::string clash = cluster.coordinator->startMigration({"web", "host2", {}});
  cluster.coordinator->waitIdle();
  auto refused = cluster.journal->get(clash);
  CHECK(refused.state == MigrationState::Failed);
  CHECK(refused.errorKind == "conflict");
  CHECK_THAT(refused.error, Catch::Contains("user namespace mapping 0:1073741824:65536 of `web` overlaps `db`'s "
                                            "0:1073774592:65536 on host2"));
  CHECK_FALSE(contains(cluster.seenNames("host2"), "prepareReceive"));
  CHECK_FALSE(contains(cluster.seenNames("host1"), "checkpointAndSend"));

  // Adjacent to `cache`'s, not overlapping: host3 is asked for exactly `web`'s.
  std::string moved = cluster.coordinator->startMigration({"web", "host3", {}});
  cluster.coordinator->waitIdle();
  std::string rootMoved = cluster.coordinator->startMigration({"root-one", "host3", {}});
  cluster.coordinator->waitIdle();
  INFO(cluster.journal->get(moved).error);
  CHECK(cluster.journal->get(moved).state == MigrationState::Succeeded);
  CHECK(cluster.journal->get(rootMoved).state == MigrationState::Succeeded);
  {
    std::lock_guard lock(mutex);
    CHECK(asked.at("web") == std::optional<IdMapping>(web));
    CHECK(asked.at("root-one") == std::nullopt);
  }
  auto status = cluster.coordinator->migration(moved);
  CHECK(status["stats"]["idMapping"] == json{{"hostId", web.hostId}, {"size", kIdMappingSize}});
  CHECK(cluster.coordinator->migration(rootMoved)["stats"]["idMapping"].is_null());
  // As host3 now reports them.
  std::map<std::string, json> onHost3;
  for (auto& c : cluster.coordinator->containers()) {
    if (c["host"] == "host3") onHost3[c["name"]] = c.value("idMapping", json("missing"));
  }
  REQUIRE(onHost3.count("web"));
  REQUIRE(onHost3.count("root-one"));
  CHECK(onHost3["web"] == json{{"hostId", web.hostId}, {"size", kIdMappingSize}});
  CHECK(onHost3["root-one"].is_null());
}

// ---------------------------------------------------------------------------
// Post-copy after switchover: paused, never rolled back by itself

namespace {

using RelayState = proto::PostCopyRelayState;

MigrationRequest postCopyMove(std::string container, std::string target) {
  MigrationOptions options;
  options.postCopy = true;
  return {std::move(container), std::move(target), options};
}

void failReply(proto::Reply::Builder reply, const std::string& message) {
  reply.setOk(false);
  reply.setErrorKind(proto::ErrorKind::FAILED);
  reply.setErrorMessage(message);
}

// The source's finishPostCopy fails (its page channel broke) until `healed`.
void breakPagesUntil(Cluster& cluster, std::atomic<bool>& healed) {
  cluster.agent("host1").setHandler("finishPostCopy", [&](proto::Request::Reader, proto::Reply::Builder reply) {
    if (!healed) {
      failReply(reply, "page transfer failed: page channel to host2 reset");
      return true;
    }
    auto stats = reply.initStats();
    stats.setBytesPages(96u << 20);
    stats.setPagesNs(500000000);
    return true;
  });
}

bool anyOf(const std::vector<std::string>& names, std::initializer_list<const char*> these) {
  for (auto* name : these) {
    if (contains(names, name)) return true;
  }
  return false;
}

// Until `id` is paused and the recovery loop has asked both relays at least once.
bool waitPausedAndProbed(Cluster& cluster, const std::string& id) {
  return waitFor([&] {
    auto seen1 = cluster.seenNames("host1"), seen2 = cluster.seenNames("host2");
    return cluster.journal->get(id).state == MigrationState::Paused && contains(seen1, "postCopyStatus") &&
           contains(seen2, "postCopyStatus");
  });
}

}  // namespace

TEST_CASE("post-copy: a failed page transfer pauses, a cut channel reconnects both sides with one fresh key and commits") {
  Cluster cluster(300ms);
  cluster.agent("host1").addContainer("web", "running");
  std::atomic<bool> healed{false};
  breakPagesUntil(cluster, healed);
  // Both relays hold on to the cut channel; once resumed, the pages finish.
  cluster.agent("host1").setRelay(RelayState::CUT, "connection reset by peer");
  cluster.agent("host2").setRelay(RelayState::CUT, "connection reset by peer", 7);
  cluster.agent("host1").setHandler("resumePostCopy", [&](proto::Request::Reader, proto::Reply::Builder) {
    healed = true;
    return false;
  });
  cluster.start();

  std::string id = cluster.coordinator->startMigration(postCopyMove("web", "host2"));
  cluster.coordinator->waitIdle();
  auto record = cluster.journal->get(id);
  INFO(record.error);
  CHECK(record.state == MigrationState::Succeeded);
  CHECK(record.stats.contains("switchoverAtMs"));
  CHECK(record.stats["pauses"] == 1);
  CHECK_FALSE(record.stats.contains("pausedReason"));
  CHECK(record.stats["bytesPages"] == (96u << 20));
  CHECK(cluster.journal->ownerIfExists("web") == std::optional<std::string>("host2"));

  // The target took the fresh key before the source dialled with it; the
  // same key on both sides, not the migration's first one.
  auto seen = cluster.seen();
  int resumeTarget = indexOf(seen, "host2", "resumePostCopy");
  int resumeSource = indexOf(seen, "host1", "resumePostCopy");
  REQUIRE(resumeTarget >= 0);
  CHECK(resumeTarget < resumeSource);
  auto targetKeys = cluster.agent("host2").resumeKeys(), sourceKeys = cluster.agent("host1").resumeKeys();
  REQUIRE(targetKeys.size() == 1);
  REQUIRE(sourceKeys.size() == 1);
  CHECK(targetKeys[0] == sourceKeys[0]);
  CHECK(targetKeys[0].size() == 32);
  // Nothing was rolled back, on either side.
  CHECK_FALSE(anyOf(cluster.seenNames("host1"), {"rollbackSource"}));
  CHECK_FALSE(anyOf(cluster.seenNames("host2"), {"abortReceive"}));
  CHECK(cluster.events(id) == std::vector<std::string>{"migration.started", "migration.paused", "migration.resumed",
                                                        "migration.succeeded"});
}

TEST_CASE("post-copy: paused, the source's `done` commits, a failed relay stays paused with its reason") {
  Cluster cluster(300ms);
  cluster.agent("host1").addContainer("web", "running");
  std::atomic<bool> healed{false};
  breakPagesUntil(cluster, healed);
  cluster.agent("host1").setRelay(RelayState::FLOWING);
  cluster.agent("host2").setRelay(RelayState::FAILED, "criu lazy-pages exited with signal 9; the container is frozen");
  cluster.start();

  std::string id = cluster.coordinator->startMigration(postCopyMove("web", "host2"));
  REQUIRE(waitPausedAndProbed(cluster, id));
  // The relay's own report replaces the first reason; it stays paused.
  REQUIRE(waitFor([&] { return cluster.journal->get(id).error.find("lazy-pages") != std::string::npos; }));
  auto paused = cluster.journal->get(id);
  CHECK(paused.state == MigrationState::Paused);
  CHECK(paused.error == "host2: page relay failed: criu lazy-pages exited with signal 9; the container is frozen");
  CHECK(paused.stats["pausedReason"] == paused.error);
  CHECK(paused.stats.contains("pausedAtMs"));
  auto json = cluster.coordinator->migration(id);
  CHECK(json["state"] == "paused");
  CHECK(json["phase"] == "pages");
  CHECK(json["stats"]["switchoverAt"].is_string());
  CHECK(json["stats"]["pausedAt"].is_string());
  CHECK_FALSE(anyOf(cluster.seenNames("host1"), {"rollbackSource", "resumePostCopy"}));
  CHECK_FALSE(anyOf(cluster.seenNames("host2"), {"abortReceive", "resumePostCopy"}));
  // `migrate cancel` cannot touch it either.
  CHECK_THROWS_AS(cluster.coordinator->cancelMigration(id), Error);

  // The source finishes after all (the target's lazy-pages had every page).
  healed = true;
  cluster.agent("host1").setRelay(RelayState::DONE);
  cluster.coordinator->recoverMigration(id);
  REQUIRE(waitFor([&] { return cluster.journal->get(id).state == MigrationState::Succeeded; }));
  CHECK(cluster.events(id).back() == "migration.succeeded");
  CHECK(contains(cluster.events(id), "migration.resumed"));
  CHECK_FALSE(anyOf(cluster.seenNames("host1"), {"rollbackSource"}));
}

TEST_CASE("post-copy: abandon --keep source aborts the target, then resumes the source, and says what is lost") {
  Cluster cluster(300ms);
  cluster.agent("host1").addContainer("web", "running");
  std::atomic<bool> healed{false};
  breakPagesUntil(cluster, healed);
  cluster.agent("host1").setRelay(RelayState::FAILED, "criu page server died");
  cluster.agent("host2").setRelay(RelayState::CUT, "no page source", 4);
  cluster.start();

  std::string id = cluster.coordinator->startMigration(postCopyMove("web", "host2"));
  REQUIRE(waitPausedAndProbed(cluster, id));
  // Keeping the target is refused while it waits for pages; nothing changes.
  try {
    cluster.coordinator->abandonMigration(id, KeepSide::Target);
    FAIL("keeping a target that lacks pages was allowed");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::Conflict);
    CHECK(std::string(e.what()) ==
          "host2 still waits for 4 page requests from host1; keeping host2's copy would run it on memory it never "
          "received — recover, or keep the source");
  }
  CHECK(cluster.journal->get(id).state == MigrationState::Paused);
  CHECK(cluster.journal->ownerIfExists("web") == std::optional<std::string>("host1"));

  auto answer = cluster.coordinator->abandonMigration(id, KeepSide::Source);
  CHECK(answer["stats"]["kept"] == "source");
  REQUIRE(waitFor([&] { return cluster.journal->get(id).state == MigrationState::Abandoned; }));
  auto record = cluster.journal->get(id);
  CHECK(isFinal(record.state));
  CHECK(record.stats["kept"] == "source");
  std::string lost = record.stats["lost"];
  CHECK(lost.rfind("writes made on host2 in the ", 0) == 0);
  CHECK(lost.find(" s since switchover") != std::string::npos);
  CHECK(record.error.find(lost) != std::string::npos);
  checkTargetAbortedFirst(cluster);
  CHECK(cluster.journal->ownerIfExists("web") == std::optional<std::string>("host1"));
  CHECK(cluster.events(id).back() == "migration.abandoned");
  // A final migration takes no more verbs.
  CHECK_THROWS_AS(cluster.coordinator->abandonMigration(id, KeepSide::Source), Error);
  CHECK_THROWS_AS(cluster.coordinator->recoverMigration(id), Error);
}

TEST_CASE("post-copy: abandon --keep target, once the target has every page, commits and cleans the source") {
  Cluster cluster(300ms);
  cluster.agent("host1").addContainer("web", "running");
  std::atomic<bool> healed{false};
  breakPagesUntil(cluster, healed);
  cluster.agent("host1").setRelay(RelayState::FAILED, "criu page server died");
  cluster.agent("host2").setRelay(RelayState::DONE);
  cluster.start();

  std::string id = cluster.coordinator->startMigration(postCopyMove("web", "host2"));
  REQUIRE(waitPausedAndProbed(cluster, id));
  CHECK(cluster.journal->get(id).error.find("`abandon --keep target` commits") != std::string::npos);
  cluster.coordinator->abandonMigration(id, KeepSide::Target);
  REQUIRE(waitFor([&] { return cluster.journal->get(id).state == MigrationState::Abandoned; }));
  auto record = cluster.journal->get(id);
  CHECK(record.stats["kept"] == "target");
  CHECK(cluster.journal->ownerIfExists("web") == std::optional<std::string>("host2"));
  CHECK(contains(cluster.seenNames("host1"), "commitSource"));
  CHECK_FALSE(anyOf(cluster.seenNames("host1"), {"rollbackSource"}));
  CHECK_FALSE(anyOf(cluster.seenNames("host2"), {"abortReceive"}));
}

TEST_CASE("post-copy: verbs on a migration that is not paused are refused naming its state") {
  Cluster cluster(300ms);
  cluster.agent("host1").addContainer("web", "running");
  cluster.start();
  std::string id = cluster.coordinator->startMigration({"web", "host2", {}});
  cluster.coordinator->waitIdle();
  try {
    cluster.coordinator->recoverMigration(id);
    FAIL("recover of a finished migration was accepted");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::Conflict);
    CHECK(std::string(e.what()) == "migration " + id + " is succeeded, not paused: nothing to recover");
  }
}

TEST_CASE("post-copy: a coordinator restarted while paused resumes the recovery loop and never rolls back") {
  Cluster cluster(300ms);
  cluster.agent("host1").addContainer("web", "checkpointed");
  cluster.agent("host2").addContainer("web", "running");
  cluster.agent("host1").setRelay(RelayState::CUT, "connection reset");
  cluster.agent("host2").setRelay(RelayState::CUT, "connection reset", 2);
  std::atomic<bool> healed{false};
  breakPagesUntil(cluster, healed);
  cluster.agent("host1").setHandler("resumePostCopy", [&](proto::Request::Reader, proto::Reply::Builder) {
    healed = true;
    return false;
  });

  auto journalled = [](std::string id, std::string container, MigrationState state) {
    MigrationRecord r;
    r.id = std::move(id);
    r.container = std::move(container);
    r.source = "host1";
    r.target = "host2";
    r.state = state;
    r.options = {{"postCopy", true}};
    return r;
  };
  // Paused by the previous run; and one whose restore replied just before
  // the crash, its switchover unjournalled, and one that never got there.
  auto paused = journalled("m-paused", "web", MigrationState::Paused);
  paused.stats = {{"switchoverAtMs", nowEpochMs() - 5000}, {"pausedReason", "page transfer failed"}};
  cluster.journal->insert(paused);
  cluster.journal->setOwner("web", "host1");

  cluster.start();
  REQUIRE(waitFor([&] { return cluster.journal->get("m-paused").state == MigrationState::Succeeded; }));
  CHECK(contains(cluster.seenNames("host2"), "resumePostCopy"));
  CHECK_FALSE(anyOf(cluster.seenNames("host1"), {"rollbackSource"}));
  CHECK_FALSE(anyOf(cluster.seenNames("host2"), {"abortReceive"}));
  CHECK(cluster.journal->ownerIfExists("web") == std::optional<std::string>("host2"));
}

TEST_CASE("post-copy: restarted in `restoring`, the target's relay decides: present resumes the pages, absent rolls back") {
  Cluster cluster(300ms);
  bool targetHasRelay = GENERATE(true, false);
  INFO("target relay: " << targetHasRelay);
  cluster.agent("host1").addContainer("web", "checkpointed");
  if (targetHasRelay) cluster.agent("host2").addContainer("web", "running");
  cluster.agent("host1").setRelay(RelayState::FLOWING);
  cluster.agent("host2").setRelay(targetHasRelay ? RelayState::FLOWING : RelayState::ABSENT);
  MigrationRecord r;
  r.id = "m-restoring";
  r.container = "web";
  r.source = "host1";
  r.target = "host2";
  r.state = MigrationState::Restoring;
  r.options = {{"postCopy", true}};
  cluster.journal->insert(r);
  cluster.journal->setOwner("web", "host1");

  cluster.start();
  MigrationState expected = targetHasRelay ? MigrationState::Succeeded : MigrationState::RolledBack;
  REQUIRE(waitFor([&] { return cluster.journal->get("m-restoring").state == expected; }));
  auto record = cluster.journal->get("m-restoring");
  CHECK(contains(cluster.seenNames("host2"), "postCopyStatus"));
  CHECK(record.stats.contains("switchoverAtMs") == targetHasRelay);
  CHECK(contains(cluster.seenNames("host1"), "rollbackSource") == !targetHasRelay);
  CHECK(contains(cluster.seenNames("host1"), "finishPostCopy") == targetHasRelay);
}

TEST_CASE("post-copy: the target's agent lost while pages go is no reason to stop: the source's last page commits") {
  Cluster cluster(200ms);
  cluster.agent("host1").addContainer("web", "running");
  cluster.start();
  cluster.agent("host2").setHandler("restore", [&](proto::Request::Reader, proto::Reply::Builder reply) {
    // Answers the restore, then goes silent: no more heartbeats. Its page
    // relay goes on without it, and the source says when the last page went.
    reply.initRestored().getStats().setSha256("aa");
    cluster.agent("host2").setSilent(true);
    return true;
  });

  std::string id = cluster.coordinator->startMigration(postCopyMove("web", "host2"));
  REQUIRE(waitFor([&] {
    auto state = cluster.journal->get(id).state;
    return state == MigrationState::Committed || state == MigrationState::Succeeded;
  }, 20s));
  CHECK(cluster.journal->owners()["web"] == "host2");
  CHECK_FALSE(anyOf(cluster.seenNames("host1"), {"rollbackSource"}));
  CHECK(contains(cluster.seenNames("host1"), "finishPostCopy"));
}
