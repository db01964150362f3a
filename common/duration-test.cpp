#include "common/duration.h"

#include <catch2/catch.hpp>

#include "common/error.h"

using namespace migrate;

TEST_CASE("durations parse as operators type them, and anything else is refused naming it") {
  CHECK(parseDurationMs("500ms") == 500);
  CHECK(parseDurationMs("500") == 500);
  CHECK(parseDurationMs("2s") == 2000);
  CHECK(parseDurationMs("1.5s") == 1500);
  CHECK(parseDurationMs("1m") == 60000);
  CHECK(parseDurationMs("24h") == kMaxDurationMs);
  for (const char* bad : {"", "ms", "fast", "0", "0.1ms", "-3s", "25h", "5 s", " 5s", "+5s", "0x1f4", "1e3",
                          "nan", "25m0", "1..5s"}) {
    INFO(bad);
    try {
      parseDurationMs(bad);
      FAIL("accepted");
    } catch (const Error& e) {
      CHECK(e.kind() == ErrorKind::InvalidInput);
      CHECK(std::string(e.what()).find("`" + std::string(bad) + "`") != std::string::npos);
    }
  }
}
