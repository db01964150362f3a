#include "coordinator/downtime-estimate.h"

#include <algorithm>
#include <sstream>

#include "common/error.h"
#include "coordinator/migration.h"

namespace migrate {

namespace {

// A tar header and the padding of its last block, per file.
constexpr uint64_t kBytesPerEntry = 1024;

std::string mib(double bytes) {
  std::ostringstream out;
  out.precision(bytes >= 10.0 * (1 << 20) ? 0 : 1);
  out << std::fixed << bytes / (1 << 20) << " MiB";
  return out.str();
}

}  // namespace

uint64_t CheckpointMeasure::bytes() const { return memoryBytes + rootfsDiffBytes + rootfsDiffEntries * kBytesPerEntry; }

DowntimeEstimate estimateStopAndCopy(const CheckpointMeasure& measure, const std::vector<MigrationRecord>& history,
                                     const std::string& a, const std::string& b) {
  DowntimeEstimate e;
  e.bytesPerSecond = kAssumedBytesPerSecond;
  e.basis = "no stop-and-copy between " + a + " and " + b + " on record; assumed " +
            mib(kAssumedBytesPerSecond) + "/s";
  for (auto& r : history) {
    bool pair = (r.source == a && r.target == b) || (r.source == b && r.target == a);
    if (!pair || r.state != MigrationState::Succeeded || MigrationOptions::fromJson(r.options).postCopy) continue;
    double downtimeMs = r.stats.value("downtimeMs", 0.0);
    double bytes = r.stats.value("bytesRaw", 0.0);
    if (downtimeMs <= 0 || bytes <= 0) continue;
    // Past the fixed part (at least a tenth of it counted as transfer).
    double transferMs = std::max(downtimeMs - kFixedDowntimeMs, downtimeMs / 10);
    e.bytesPerSecond = bytes / (transferMs / 1000);
    std::ostringstream basis;
    basis.precision(2);
    basis << std::fixed << "measured by " << r.id << " (" << r.source << " -> " << r.target << ": " << mib(bytes)
          << " in " << downtimeMs / 1000 << " s of downtime, " << mib(e.bytesPerSecond) << "/s)";
    e.basis = basis.str();
    break;
  }
  e.ms = kFixedDowntimeMs + double(measure.bytes()) / e.bytesPerSecond * 1000;
  std::ostringstream basis;
  basis << mib(double(measure.memoryBytes)) << " of memory, " << mib(double(measure.rootfsDiffBytes)) << " in "
        << measure.rootfsDiffEntries << " files of writable layer; rate " << e.basis;
  e.basis = basis.str();
  return e;
}

}  // namespace migrate
