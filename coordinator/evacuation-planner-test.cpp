#include "coordinator/evacuation-planner.h"

#include <catch2/catch.hpp>

using namespace migrate;

namespace {
constexpr uint64_t MiB = 1ull << 20;
}

TEST_CASE("evacuation planner: spreads by free memory, skips the source and down hosts") {
  auto plan = planEvacuation("host1",
                             {{"a", 100 * MiB}, {"b", 100 * MiB}, {"c", 100 * MiB}},
                             {{"host1", 8000 * MiB, true}, {"host2", 400 * MiB, true}, {"host3", 300 * MiB, true},
                              {"host4", 9000 * MiB, false}});
  REQUIRE(plan.moves.size() == 3);
  CHECK(plan.unplaced.empty());
  // host2 (400) takes a -> 300 left; tie with host3 (300) goes to the smaller name; then host3.
  CHECK(plan.moves[0].container == "a");
  CHECK(plan.moves[0].target == "host2");
  CHECK(plan.moves[1].target == "host2");
  CHECK(plan.moves[2].target == "host3");
  for (auto& m : plan.moves) {
    CHECK(m.target != "host1");
    CHECK(m.target != "host4");
  }
}

TEST_CASE("evacuation planner: biggest first, and what fits nowhere is reported") {
  auto plan = planEvacuation("host1", {{"small", 10 * MiB}, {"huge", 5000 * MiB}, {"big", 500 * MiB}},
                             {{"host2", 700 * MiB, true}, {"host3", 250 * MiB, true}});
  REQUIRE(plan.moves.size() == 2);
  CHECK(plan.moves[0].container == "big");
  CHECK(plan.moves[0].target == "host2");
  CHECK(plan.moves[1].container == "small");
  CHECK(plan.moves[1].target == "host3");
  REQUIRE(plan.unplaced.size() == 1);
  CHECK(plan.unplaced[0].first == "huge");
}

TEST_CASE("evacuation planner: unknown sizes use the default, no candidates leaves all in place") {
  auto plan = planEvacuation("host1", {{"x", 0}, {"y", 0}}, {{"host2", 1000 * MiB, true}, {"host3", 900 * MiB, true}});
  REQUIRE(plan.moves.size() == 2);
  CHECK(plan.moves[0].target == "host2");
  CHECK(plan.moves[1].target == "host2");  // 1000 - 64 still beats 900
  auto none = planEvacuation("host1", {{"x", 0}}, {{"host1", 1000 * MiB, true}});
  CHECK(none.moves.empty());
  REQUIRE(none.unplaced.size() == 1);
  CHECK(none.unplaced[0].second == "no target host is up");
}
