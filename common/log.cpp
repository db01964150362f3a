#include "common/log.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "common/timestamp.h"

namespace migrate {

namespace {

LogLevel threshold() {
  static const LogLevel level = [] {
    const char* env = std::getenv("MIGRATE_LOG");
    if (!env) return LogLevel::Info;
    if (!std::strcmp(env, "debug")) return LogLevel::Debug;
    if (!std::strcmp(env, "warn")) return LogLevel::Warn;
    if (!std::strcmp(env, "error")) return LogLevel::Error;
    return LogLevel::Info;
  }();
  return level;
}

std::string& tag() {
  static std::string t = "migrate";
  return t;
}

}  // namespace

void setLogTag(std::string_view t) { tag() = t; }

void logMessage(LogLevel level, std::string_view message) {
  if (level < threshold()) return;
  static const char* names[] = {"debug", "info", "warn", "error"};
  std::string line = nowUtc(TimeFormat::TimeOfDayMillis) + " " + tag() + " " + names[static_cast<int>(level)] + ": " +
                     std::string(message) + "\n";
  // One write so lines from several processes do not interleave.
  (void)!::write(2, line.data(), line.size());
}

}  // namespace migrate
