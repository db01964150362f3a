#include "coordinator/downtime-estimate.h"

#include <catch2/catch.hpp>

using namespace migrate;

namespace {

MigrationRecord done(const std::string& id, const std::string& from, const std::string& to, bool postCopy,
                     double downtimeMs, double bytesRaw, MigrationState state = MigrationState::Succeeded) {
  MigrationRecord r;
  r.id = id;
  r.source = from;
  r.target = to;
  r.state = state;
  r.options = {{"postCopy", postCopy}};
  r.stats = {{"downtimeMs", downtimeMs}, {"bytesRaw", bytesRaw}};
  return r;
}

constexpr double kMiB = 1 << 20;

}  // namespace

TEST_CASE("a stop-and-copy's downtime is estimated from the last stop-and-copy between the same two hosts") {
  CheckpointMeasure gib{1ull << 30, 0, 0};
  std::vector<MigrationRecord> history = {
      done("m-post", "host1", "host2", true, 400, 10 * kMiB),               // post-copy: not a rate
      done("m-failed", "host2", "host1", false, 100, 1024 * kMiB, MigrationState::RolledBack),
      done("m-other", "host1", "host3", false, 1000, 1024 * kMiB),          // another pair
      done("m-back", "host2", "host1", false, 2300, 512 * kMiB),            // the other way: counts
      done("m-old", "host1", "host2", false, 20300, 512 * kMiB),            // older: not read
  };
  auto e = estimateStopAndCopy(gib, history, "host1", "host2");
  // 512 MiB in 2.3 s, 2 s of it past the fixed part: 256 MiB/s; 1 GiB then
  // takes 4 s more than the fixed part.
  CHECK(e.bytesPerSecond == Approx(256 * kMiB));
  CHECK(e.ms == Approx(kFixedDowntimeMs + 4000));
  CHECK(e.basis.find("measured by m-back") != std::string::npos);
  CHECK(e.basis.find("1024 MiB of memory") != std::string::npos);
}

TEST_CASE("without a measured pair the estimate assumes the lab's rate, and files count") {
  CheckpointMeasure files{16ull << 20, 20000ull * 1000, 20000};
  auto e = estimateStopAndCopy(files, {}, "host1", "host2");
  CHECK(e.bytesPerSecond == kAssumedBytesPerSecond);
  CHECK(e.ms == Approx(kFixedDowntimeMs + double(files.bytes()) / kAssumedBytesPerSecond * 1000));
  CHECK(files.bytes() == (16ull << 20) + 20000ull * 1000 + 20000ull * 1024);
  CHECK(e.basis.find("no stop-and-copy between host1 and host2 on record") != std::string::npos);
  CHECK(e.basis.find("20000 files") != std::string::npos);
}
