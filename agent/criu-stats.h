// CRIU's own timings: the `stats-dump` and `stats-restore` files it leaves in
// its work directory (a CRIU image: two magic words, a length, then one
// protobuf StatsEntry; images/stats.proto). Read so that a migration's stats
// say where the frozen time went, not only how long it was.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>

namespace migrate {

// Field name (as in stats.proto, camelCase) -> value; times in nanoseconds
// (CRIU stores microseconds). nullopt when the file is missing or not a
// stats image.
using CriuStats = std::map<std::string, uint64_t>;

std::optional<CriuStats> readCriuDumpStats(const std::filesystem::path& file);
std::optional<CriuStats> readCriuRestoreStats(const std::filesystem::path& file);

// For tests: the same, from the image bytes.
std::optional<CriuStats> parseCriuStats(const std::string& image, bool dump);

}  // namespace migrate
