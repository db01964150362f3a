#include "common/log.h"

#include <time.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

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
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm;
  gmtime_r(&ts.tv_sec, &tm);
  char when[32];
  strftime(when, sizeof when, "%H:%M:%S", &tm);
  std::string line = std::string(when) + "." + std::to_string(ts.tv_nsec / 1000000 + 1000).substr(1) + " " +
                     tag() + " " + names[static_cast<int>(level)] + ": " + std::string(message) + "\n";
  // One write so lines from several processes do not interleave.
  (void)!::write(2, line.data(), line.size());
}

}  // namespace migrate
