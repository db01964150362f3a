#include "common/duration.h"

#include <cmath>
#include <cstdlib>

#include "common/error.h"

namespace migrate {

uint64_t parseDurationMs(const std::string& text) {
  // Digits with at most one point, then a unit: nothing strtod alone would
  // also take (spaces, signs, hex, exponents).
  size_t end = 0;
  bool point = false, digit = false;
  for (; end < text.size(); ++end) {
    char c = text[end];
    if (c >= '0' && c <= '9') digit = true;
    else if (c == '.' && !point) point = true;
    else break;
  }
  std::string unit = text.substr(end);
  double factor = unit.empty() || unit == "ms" ? 1
                  : unit == "s"                ? 1000
                  : unit == "m" || unit == "min" ? 60000
                  : unit == "h"                ? 3600000
                                               : -1;
  double value = digit ? std::strtod(text.substr(0, end).c_str(), nullptr) : 0;
  if (!digit || factor < 0 || value * factor < 1 || value * factor > kMaxDurationMs) {
    fail(ErrorKind::InvalidInput, "duration `" + text + "`: give one from 1ms to 24h, such as 500ms, 2s or 1m");
  }
  return static_cast<uint64_t>(std::llround(value * factor));
}

}  // namespace migrate
