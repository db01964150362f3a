#include "agent/id-mapping.h"

#include <catch2/catch.hpp>

#include "common/error.h"

using namespace migrate;

TEST_CASE("an id mapping is allocated from the range, away from those taken, the same for the same seed") {
  IdRange range = IdRange::parse("1073741824:1073741824");
  auto a = allocateIdMapping(range, "0123456789abcdef0123456789abcdef", {});
  CHECK(range.contains(a));
  CHECK(a.size == kIdMappingSize);
  CHECK((a.hostId - range.first) % kIdMappingSize == 0);
  CHECK(allocateIdMapping(range, "0123456789abcdef0123456789abcdef", {}) == a);
  auto b = allocateIdMapping(range, "0123456789abcdef0123456789abcdef", {a});
  CHECK_FALSE(b.overlaps(a));
  CHECK(range.contains(b));
  // Another seed usually starts elsewhere.
  CHECK(allocateIdMapping(range, "ffffffffffffffffffffffffffffffff", {}) != a);
}

TEST_CASE("a full range refuses with Conflict, naming the range") {
  IdRange range = IdRange::parse("200000:131072");
  std::vector<IdMapping> taken = {{200000, kIdMappingSize}, {265536, kIdMappingSize}};
  try {
    allocateIdMapping(range, "x", taken);
    FAIL("allocated from a full range");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::Conflict);
    CHECK(std::string(e.what()).find("200000:131072") != std::string::npos);
  }
  // A mapping not on a slot boundary still blocks the slots it touches.
  CHECK_THROWS(allocateIdMapping(range, "x", {{230000, 100000}}));
}

TEST_CASE("ranges and mappings from outside are checked") {
  CHECK_THROWS_WITH(IdRange::parse("0:65536"), Catch::Contains("host root"));
  CHECK_THROWS_WITH(IdRange::parse("100000:100"), Catch::Contains("fewer than 65536"));
  CHECK_THROWS_WITH(IdRange::parse("4294967000:65536"), Catch::Contains("past the last id"));
  CHECK_THROWS_WITH(IdRange::parse("abc"), Catch::Contains("FIRST:COUNT"));
  CHECK(IdRange::parse("100000:65536").text() == "100000:65536");

  CHECK(IdMapping::fromJson({{"hostId", 100000}, {"size", 65536}}, "m") == IdMapping{100000, 65536});
  CHECK_THROWS_WITH(IdMapping::fromJson({{"hostId", 4294967290u}, {"size", 65536}}, "m"), Catch::Contains("past the last id"));
  CHECK_THROWS_WITH(IdMapping::fromJson({{"hostId", 1}, {"size", 0}}, "m"), Catch::Contains("maps no id"));
  CHECK_THROWS_WITH(IdMapping::fromJson({{"hostId", -1}, {"size", 10}}, "m"), Catch::Contains("unsigned"));
  CHECK(IdMapping{100000, 65536}.text() == "0:100000:65536");
  CHECK(IdMapping{100000, 10}.overlaps({100009, 1}));
  CHECK_FALSE(IdMapping{100000, 10}.overlaps({100010, 1}));
}
