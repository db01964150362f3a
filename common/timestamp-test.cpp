#include "common/timestamp.h"

#include <catch2/catch.hpp>

using namespace migrate;

namespace {

WallClock::time_point at(int64_t epochMs) { return WallClock::time_point(std::chrono::milliseconds(epochMs)); }

}  // namespace

TEST_CASE("formatUtc prints RFC 3339 with milliseconds, seconds, or the time of day") {
  auto when = at(1764602164123);  // 2025-12-01T15:16:04.123Z
  CHECK(formatUtc(when, TimeFormat::Rfc3339Millis) == "2025-12-01T15:16:04.123Z");
  CHECK(formatUtc(when, TimeFormat::Rfc3339Seconds) == "2025-12-01T15:16:04Z");
  CHECK(formatUtc(when, TimeFormat::TimeOfDayMillis) == "15:16:04.123");
}

TEST_CASE("formatUtc pads milliseconds and handles the epoch and before it") {
  CHECK(formatUtc(at(5), TimeFormat::Rfc3339Millis) == "1970-01-01T00:00:00.005Z");
  CHECK(formatUtc(at(-1), TimeFormat::Rfc3339Millis) == "1969-12-31T23:59:59.999Z");
}

TEST_CASE("nowUtc is an RFC 3339 instant in UTC") {
  auto text = nowUtc();
  REQUIRE(text.size() == 24);
  CHECK(text[10] == 'T');
  CHECK(text.back() == 'Z');
}
