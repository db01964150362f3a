#include "common/duration.h"

#include <cmath>

#include "common/error.h"

namespace migrate {

uint64_t parseDurationMs(const std::string& text) {
  size_t end = 0;
  double value = 0;
  try {
    value = std::stod(text, &end);
  } catch (const std::exception&) {
    end = 0;
  }
  std::string unit = text.substr(end);
  double factor = unit.empty() || unit == "ms" ? 1 : unit == "s" ? 1000 : unit == "m" || unit == "min" ? 60000 : -1;
  if (end == 0 || factor < 0 || !std::isfinite(value) || value * factor < 1 || value * factor > 86400000) {
    fail(ErrorKind::InvalidInput, "duration `" + text + "`: give one from 1ms to 24h, such as 500ms, 2s or 1m");
  }
  return static_cast<uint64_t>(std::llround(value * factor));
}

}  // namespace migrate
