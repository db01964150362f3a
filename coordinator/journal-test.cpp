// Real SQLite in a temp dir.
#include "coordinator/journal.h"

#include <catch2/catch.hpp>

#include "common/files.h"
#include "coordinator/migration.h"

using namespace migrate;
using nlohmann::json;

namespace {

MigrationRecord sample(const std::string& id, const std::string& container = "web") {
  MigrationRecord r;
  r.id = id;
  r.container = container;
  r.source = "host1";
  r.target = "host2";
  r.options = {{"tcpEstablished", true}};
  return r;
}

}  // namespace

TEST_CASE("journal: transitions, stats and owners persist across reopen") {
  TempDir dir("/tmp", "journal-test");
  auto path = dir.path() / "coordinator.db";
  {
    Journal journal(path);
    journal.insert(sample("m-1"));
    journal.setState("m-1", MigrationState::Prechecking);
    journal.setState("m-1", MigrationState::Checkpointing);
    journal.setStats("m-1", {{"bytesWire", 1234}});
    journal.setOwner("web", "host1");
    journal.insert(sample("m-2", "db"));
    journal.setFailure("m-2", MigrationState::Failed, "container `db` not found on host1", ErrorKind::NotFound);
    CHECK_THROWS_AS(journal.insert(sample("m-1")), Error);
  }
  Journal journal(path);
  auto m1 = journal.get("m-1");
  CHECK(m1.state == MigrationState::Checkpointing);
  CHECK(m1.container == "web");
  CHECK(m1.options["tcpEstablished"] == true);
  CHECK(m1.stats["bytesWire"] == 1234);
  auto m2 = journal.get("m-2");
  CHECK(m2.state == MigrationState::Failed);
  CHECK(m2.errorKind == "not-found");
  CHECK(m2.error.find("not found") != std::string::npos);
  CHECK(journal.ownerIfExists("web") == std::optional<std::string>("host1"));
  CHECK_FALSE(journal.ownerIfExists("db"));

  auto unfinished = journal.unfinished();
  REQUIRE(unfinished.size() == 1);
  CHECK(unfinished[0].id == "m-1");

  // The commit point moves the owner and the state together.
  journal.recordCommit("m-1", "web", "host2");
  CHECK(journal.get("m-1").state == MigrationState::Committed);
  CHECK(journal.ownerIfExists("web") == std::optional<std::string>("host2"));
  CHECK_THROWS_AS(journal.recordCommit("m-nope", "web", "host3"), Error);
  CHECK(journal.ownerIfExists("web") == std::optional<std::string>("host2"));

  journal.setFailure("m-1", MigrationState::Succeeded, "", ErrorKind::Failed);
  CHECK(journal.get("m-1").errorKind.empty());
  CHECK(journal.unfinished().empty());

  auto history = journal.history(10);
  REQUIRE(history.size() == 2);
  CHECK(journal.history(1).size() == 1);
  try {
    journal.get("m-404");
    FAIL("no error");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::NotFound);
  }
  journal.removeOwner("web");
  CHECK(journal.owners().empty());
}

TEST_CASE("journal: recovery decision per journalled state") {
  auto decide = [](MigrationState state, std::optional<std::string> owner) {
    MigrationRecord r = sample("m");
    r.state = state;
    return recoveryActionFor(r, owner);
  };
  const std::optional<std::string> onSource = "host1", onTarget = "host2", none;
  CHECK(decide(MigrationState::Pending, onSource) == RecoveryAction::MarkFailed);
  CHECK(decide(MigrationState::Prechecking, onSource) == RecoveryAction::MarkFailed);
  CHECK(decide(MigrationState::Preparing, onSource) == RecoveryAction::RollBack);
  CHECK(decide(MigrationState::Checkpointing, onSource) == RecoveryAction::RollBack);
  CHECK(decide(MigrationState::Restoring, onSource) == RecoveryAction::RollBack);
  CHECK(decide(MigrationState::Restoring, none) == RecoveryAction::RollBack);
  CHECK(decide(MigrationState::RollingBack, onSource) == RecoveryAction::RollBack);
  // The owners table naming the target wins over any earlier state.
  CHECK(decide(MigrationState::Restoring, onTarget) == RecoveryAction::FinishCommit);
  CHECK(decide(MigrationState::Committed, onTarget) == RecoveryAction::FinishCommit);
  for (auto final : {MigrationState::Succeeded, MigrationState::RolledBack, MigrationState::Failed,
                     MigrationState::Cancelled, MigrationState::Abandoned}) {
    CHECK(decide(final, onTarget) == RecoveryAction::Nothing);
    CHECK(decide(final, onSource) == RecoveryAction::Nothing);
  }
}

TEST_CASE("journal: paused and abandoned round-trip, paused is unfinished, abandoned final") {
  TempDir dir("/tmp", "journal-test");
  auto path = dir.path() / "coordinator.db";
  {
    Journal journal(path);
    journal.insert(sample("m-p"));
    journal.setStats("m-p", {{"switchoverAtMs", 1700000000000}, {"pausedReason", "page transfer failed"}});
    journal.setFailure("m-p", MigrationState::Paused, "page transfer failed", ErrorKind::Failed);
    journal.insert(sample("m-a", "db"));
    journal.setStats("m-a", {{"kept", "source"}, {"lost", "writes made on host2 in the 6.1 s since switchover"}});
    journal.setFailure("m-a", MigrationState::Abandoned, "abandoned by an operator", ErrorKind::Cancelled);
  }
  Journal journal(path);
  auto paused = journal.get("m-p");
  CHECK(paused.state == MigrationState::Paused);
  CHECK(paused.error == "page transfer failed");
  CHECK(paused.stats["switchoverAtMs"] == 1700000000000);
  auto abandoned = journal.get("m-a");
  CHECK(abandoned.state == MigrationState::Abandoned);
  CHECK(abandoned.stats["kept"] == "source");
  auto unfinished = journal.unfinished();
  REQUIRE(unfinished.size() == 1);
  CHECK(unfinished[0].id == "m-p");
  CHECK(stateName(MigrationState::Paused) == "paused");
  CHECK(stateFromName("abandoned") == MigrationState::Abandoned);
  CHECK_FALSE(isFinal(MigrationState::Paused));
  CHECK(isFinal(MigrationState::Abandoned));
  // Paused is past the restore and before the commit point: the target may
  // run the container, nothing is committed, and a cancel is too late.
  CHECK(MigrationState::Paused > MigrationState::Restoring);
  CHECK(MigrationState::Paused < MigrationState::Committed);
}

TEST_CASE("journal: post-copy past switchover is never rolled back on restart") {
  auto decide = [](MigrationState state, json stats) {
    MigrationRecord r = sample("m");
    r.options = {{"postCopy", true}};
    r.state = state;
    r.stats = std::move(stats);
    return recoveryActionFor(r, std::string("host1"));
  };
  json switchedOver = {{"switchoverAtMs", 1700000000000}};
  CHECK(decide(MigrationState::Paused, switchedOver) == RecoveryAction::ResumePaused);
  CHECK(decide(MigrationState::Restoring, switchedOver) == RecoveryAction::AwaitPages);
  // Without a journalled switchover the target's relay decides.
  CHECK(decide(MigrationState::Restoring, json::object()) == RecoveryAction::AskTarget);
  // Before the restore it is a rollback as for stop-and-copy.
  CHECK(decide(MigrationState::Checkpointing, json::object()) == RecoveryAction::RollBack);
  // An operator's `abandon --keep source` left rolling back goes on.
  CHECK(decide(MigrationState::RollingBack, {{"switchoverAtMs", 1}, {"kept", "source"}}) == RecoveryAction::RollBack);
  CHECK(decide(MigrationState::Abandoned, switchedOver) == RecoveryAction::Nothing);
}
