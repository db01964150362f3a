#include "agent/lazy-page-set.h"

#include <catch2/catch.hpp>

using namespace migrate;

namespace {
constexpr uint64_t kBase = 0x7f0000000000;
uint64_t at(uint64_t page) { return kBase + page * kPageBytes; }
}  // namespace

TEST_CASE("the lazy page set gives the pages not asked for yet, inside the ranges, each once") {
  LazyPageSet set({{1, {{at(0), 10}, {at(100), 5}}}});
  CHECK(set.knows(1));
  CHECK_FALSE(set.knows(2));
  CHECK(set.totalPages() == 15);
  CHECK(set.clamp(1, at(8), 64) == 2);
  CHECK(set.clamp(1, at(50), 64) == 64);  // in no range: as asked
  CHECK(set.clamp(2, at(0), 64) == 64);

  set.mark(1, at(2), 3, true);
  auto first = set.nextNotAsked(1, at(0), 8);
  REQUIRE(first);
  CHECK((first->vaddr == at(0) && first->pages == 2));
  auto next = set.nextNotAsked(1, at(2), 8);
  REQUIRE(next);
  CHECK((next->vaddr == at(5) && next->pages == 5));  // stops at the range's end
  set.mark(1, at(5), 5, true);
  auto second = set.nextNotAsked(1, at(5), 8);  // over the hole
  REQUIRE(second);
  CHECK((second->vaddr == at(100) && second->pages == 5));
  set.mark(1, at(0), 200, true);  // past both ranges: only theirs count
  CHECK_FALSE(set.nextNotAsked(1, at(0), 8));
  set.mark(1, at(101), 2, false);  // answered short: asked again
  auto again = set.nextNotAsked(1, at(0), 8);
  REQUIRE(again);
  CHECK((again->vaddr == at(101) && again->pages == 2));
}
