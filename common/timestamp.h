// UTC timestamps as text, in one place: records, manifests, image configs and
// log lines all print the wall clock through formatUtc.
#pragma once

#include <chrono>
#include <string>

namespace migrate {

using WallClock = std::chrono::system_clock;

enum class TimeFormat {
  Rfc3339Millis,    // 2026-12-01T15:16:04.123Z: container records, bundle manifests
  Rfc3339Seconds,   // 2026-12-01T15:16:04Z: an image's `created`, as image configs write it
  TimeOfDayMillis,  // 15:16:04.123: log lines
};

std::string formatUtc(WallClock::time_point when, TimeFormat format);
inline std::string nowUtc(TimeFormat format = TimeFormat::Rfc3339Millis) { return formatUtc(WallClock::now(), format); }

}  // namespace migrate
