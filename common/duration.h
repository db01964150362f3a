// Durations as operators type them: "500ms", "2s", "1.5s", "1m" (plain
// digits are milliseconds).
#pragma once

#include <cstdint>
#include <string>

namespace migrate {

// Error(InvalidInput), naming the text, for anything else or outside 1 ms to 24 h.
uint64_t parseDurationMs(const std::string& text);

}  // namespace migrate
