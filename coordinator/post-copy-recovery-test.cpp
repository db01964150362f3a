// The decisions of a paused post-copy migration, from what the relays report.
#include "coordinator/post-copy-recovery.h"

#include <catch2/catch.hpp>

#include "common/error.h"

using namespace migrate;
using S = RelayState;

namespace {

RelayReport report(std::string host, S state, std::string error = {}, uint32_t outstanding = 0) {
  return RelayReport{std::move(host), state, std::move(error), outstanding, 0};
}

}  // namespace

TEST_CASE("post-copy recovery: the source's `done` commits, a cut reconnects, a failure waits for an operator") {
  auto decide = [](S source, S target, bool runs = true) {
    return decideRecovery(report("host1", source, "criu page server exited 1"),
                          report("host2", target, "lazy-pages killed by signal 9"), runs);
  };
  CHECK(decide(S::DONE, S::CUT).step == RecoveryStep::AwaitPages);
  CHECK(decide(S::DONE, S::FAILED).step == RecoveryStep::AwaitPages);
  CHECK(decide(S::CUT, S::FLOWING).step == RecoveryStep::Reconnect);
  CHECK(decide(S::FLOWING, S::CUT).step == RecoveryStep::Reconnect);
  CHECK(decide(S::FLOWING, S::FLOWING).step == RecoveryStep::AwaitPages);
  CHECK(decide(S::STARTING, S::FLOWING).step == RecoveryStep::AwaitPages);
  CHECK(decide(S::CUT, S::DONE).step == RecoveryStep::AwaitPages);

  auto targetFailed = decide(S::CUT, S::FAILED);
  CHECK(targetFailed.step == RecoveryStep::StayPaused);
  CHECK(targetFailed.reason == "host2: page relay failed: lazy-pages killed by signal 9");
  auto sourceFailed = decide(S::FAILED, S::FLOWING);
  CHECK(sourceFailed.step == RecoveryStep::StayPaused);
  CHECK(sourceFailed.reason == "host1: page relay failed: criu page server exited 1");
  auto bothFailed = decide(S::FAILED, S::FAILED);
  CHECK(bothFailed.step == RecoveryStep::StayPaused);
  CHECK(bothFailed.reason == "host2: page relay failed: lazy-pages killed by signal 9");
  auto targetHasAll = decide(S::FAILED, S::DONE);
  CHECK(targetHasAll.step == RecoveryStep::StayPaused);
  CHECK(targetHasAll.reason.find("`abandon --keep target` commits") != std::string::npos);

  auto gone = decide(S::FLOWING, S::ABSENT, false);
  CHECK(gone.step == RecoveryStep::StayPaused);
  CHECK(gone.reason == "host2 has no page relay for the migration and does not run the container");
  CHECK(decide(S::FLOWING, S::ABSENT, true).step == RecoveryStep::AwaitPages);
  CHECK(decide(S::ABSENT, S::FLOWING).step == RecoveryStep::StayPaused);
}

TEST_CASE("post-copy recovery: keeping the target needs every page there, keeping the source says what is lost") {
  auto refusal = refusalToKeepTarget(report("host1", S::CUT), report("host2", S::CUT, {}, 3));
  REQUIRE(refusal);
  CHECK(*refusal == "host2 still waits for 3 page requests from host1; keeping host2's copy would run it on memory "
                    "it never received — recover, or keep the source");
  CHECK(refusalToKeepTarget(report("host1", S::CUT), report("host2", S::DONE)) == std::nullopt);
  CHECK(refusalToKeepTarget(report("host1", S::DONE), report("host2", S::CUT, {}, 1)) == std::nullopt);

  CHECK(lostByKeepingSource("host2", 1000, 7100) == "writes made on host2 in the 6.1 s since switchover");
  CHECK(keepSideFromName("source") == KeepSide::Source);
  CHECK(keepSideFromName("target") == KeepSide::Target);
  CHECK_THROWS_WITH(keepSideFromName("both"), "field `keep` is `both`, not `source` or `target`");
  CHECK(relayStateName(S::CUT) == "cut");
}
