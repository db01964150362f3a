#include "agent/criu-stats.h"

#include <catch2/catch.hpp>

using namespace migrate;

namespace {

std::string varint(uint64_t v) {
  std::string out;
  do {
    uint8_t b = v & 0x7f;
    v >>= 7;
    out += static_cast<char>(v ? b | 0x80 : b);
  } while (v);
  return out;
}

std::string field(uint32_t number, uint64_t value) { return varint(number << 3) + varint(value); }

std::string nested(uint32_t number, const std::string& body) { return varint(number << 3 | 2) + varint(body.size()) + body; }

std::string image(const std::string& entry) {
  std::string out(8, '\x42');  // the two magic words; not checked
  uint32_t size = static_cast<uint32_t>(entry.size());
  out.append(reinterpret_cast<const char*>(&size), 4);
  return out + entry;
}

}  // namespace

TEST_CASE("CRIU stats images: dump and restore entries, times in ns", "[criu-stats]") {
  // frozen_time 1500 us, pages_written 262144 (a 1 GiB dump), plus a field
  // this reader does not know (it is skipped).
  auto dump = image(nested(1, field(2, 1500) + field(7, 262144) + field(42, 7)));
  auto stats = parseCriuStats(dump, true);
  REQUIRE(stats);
  CHECK(stats->at("frozenTime") == 1500000);
  CHECK(stats->at("pagesWritten") == 262144);
  CHECK(stats->size() == 2);
  CHECK_FALSE(parseCriuStats(dump, false));  // no restore entry in a dump's stats

  auto restore = image(nested(2, field(4, 250000) + field(5, 16384)));
  auto r = parseCriuStats(restore, false);
  REQUIRE(r);
  CHECK(r->at("restoreTime") == 250000000);
  CHECK(r->at("pagesRestored") == 16384);
}

TEST_CASE("CRIU stats images: truncated or foreign bytes give nothing, never garbage", "[criu-stats]") {
  auto whole = image(nested(1, field(2, 1500)));
  CHECK_FALSE(parseCriuStats(whole.substr(0, 10), true));
  CHECK_FALSE(parseCriuStats(whole.substr(0, whole.size() - 1), true));  // length says more than is there
  CHECK_FALSE(parseCriuStats(std::string(64, '\xff'), true));
  CHECK_FALSE(readCriuDumpStats("/nonexistent/stats-dump"));
}
