#include "common/phase.h"

#include <catch2/catch.hpp>
#include <set>
#include <string>

using namespace migrate;

TEST_CASE("phase names round-trip and are distinct") {
  std::set<std::string_view> names;
  for (int i = static_cast<int>(Phase::Pending); i <= static_cast<int>(Phase::Done); ++i) {
    auto phase = static_cast<Phase>(i);
    INFO(i);
    CHECK(phaseFromName(phaseName(phase)) == phase);
    CHECK(names.insert(phaseName(phase)).second);
  }
}

TEST_CASE("phase names are the ones the API and the CLI always showed") {
  // Read by the integration tests, the docs and users' scripts: never rename.
  CHECK(phaseName(Phase::Precheck) == "precheck");
  CHECK(phaseName(Phase::Image) == "image");
  CHECK(phaseName(Phase::Prepare) == "prepare");
  CHECK(phaseName(Phase::Checkpoint) == "checkpoint");
  CHECK(phaseName(Phase::Stream) == "stream");
  CHECK(phaseName(Phase::Receive) == "receive");
  CHECK(phaseName(Phase::Restore) == "restore");
  CHECK(phaseName(Phase::Pages) == "pages");
  CHECK(phaseName(Phase::Commit) == "commit");
  CHECK(phaseName(Phase::Rollback) == "rollback");
  CHECK(phaseName(Phase::Done) == "done");
}

TEST_CASE("an unknown phase name is refused, not guessed") {
  CHECK_FALSE(phaseFromName("unpack"));
  CHECK_FALSE(phaseFromName(""));
  CHECK_FALSE(phaseFromName("Stream"));
}
