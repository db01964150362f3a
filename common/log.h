// Logging to stderr with a level; one Logger passed down, no global sink other
// than the level threshold read from MIGRATE_LOG (debug, info, warn, error).
#pragma once

#include <string_view>

namespace migrate {

enum class LogLevel { Debug, Info, Warn, Error };

void logMessage(LogLevel level, std::string_view message);
inline void logDebug(std::string_view m) { logMessage(LogLevel::Debug, m); }
inline void logInfo(std::string_view m) { logMessage(LogLevel::Info, m); }
inline void logWarn(std::string_view m) { logMessage(LogLevel::Warn, m); }
inline void logError(std::string_view m) { logMessage(LogLevel::Error, m); }

// The program name printed before each line ("migrate-agent[host1]").
void setLogTag(std::string_view tag);

}  // namespace migrate
