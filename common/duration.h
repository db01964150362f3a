// Durations as operators type them: "500ms", "2s", "1.5s", "1m", "1h" (plain
// digits are milliseconds).
#pragma once

#include <cstdint>
#include <string>

namespace migrate {

constexpr uint64_t kMaxDurationMs = 24ull * 3600 * 1000;

// Error(InvalidInput), naming the text, for anything else or outside 1 ms to 24 h.
uint64_t parseDurationMs(const std::string& text);

}  // namespace migrate
