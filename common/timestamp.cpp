#include "common/timestamp.h"

#include <time.h>

#include <cstdio>

namespace migrate {

std::string formatUtc(WallClock::time_point when, TimeFormat format) {
  auto sinceEpoch = std::chrono::duration_cast<std::chrono::milliseconds>(when.time_since_epoch()).count();
  // Floor division, so an instant before 1970 keeps a millisecond part in [0, 999].
  auto millis = sinceEpoch % 1000;
  if (millis < 0) millis += 1000;
  time_t seconds = static_cast<time_t>((sinceEpoch - millis) / 1000);
  struct tm tm;
  gmtime_r(&seconds, &tm);
  char out[64];
  switch (format) {
    case TimeFormat::Rfc3339Millis:
      std::snprintf(out, sizeof out, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
                    tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(millis));
      break;
    case TimeFormat::Rfc3339Seconds:
      std::snprintf(out, sizeof out, "%04d-%02d-%02dT%02d:%02d:%02dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                    tm.tm_hour, tm.tm_min, tm.tm_sec);
      break;
    case TimeFormat::TimeOfDayMillis:
      std::snprintf(out, sizeof out, "%02d:%02d:%02d.%03d", tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(millis));
      break;
  }
  return out;
}

}  // namespace migrate
