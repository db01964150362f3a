#include "agent/identifiers.h"

#include <algorithm>
#include <cstdio>

#include "common/error.h"

namespace migrate {

namespace {

bool isLowerHex(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

bool isNameChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-';
}

[[noreturn]] void refuse(std::string_view value, std::string_view what, std::string_view rule) {
  fail(ErrorKind::InvalidInput, std::string(what) + " " + quotedForMessage(value) + ": " + std::string(rule));
}

constexpr std::string_view kNameRule = "must be 1-64 of [A-Za-z0-9_.-], not starting with `.` or `-`";

}  // namespace

bool isContainerId(std::string_view value) { return value.size() == 32 && isLowerHex(value); }

bool isContainerName(std::string_view value) {
  return !value.empty() && value.size() <= 64 && std::all_of(value.begin(), value.end(), isNameChar) &&
         value[0] != '.' && value[0] != '-';
}

bool isImageDigest(std::string_view value) {
  return value.starts_with("sha256:") && value.size() == 7 + 64 && isLowerHex(value.substr(7));
}

void checkContainerId(std::string_view value, std::string_view what) {
  if (!isContainerId(value)) refuse(value, what, "must be 32 lowercase hex characters");
}

void checkContainerName(std::string_view value, std::string_view what) {
  if (!isContainerName(value)) refuse(value, what, kNameRule);
}

void checkHostName(std::string_view value, std::string_view what) {
  if (!isContainerName(value)) refuse(value, what, kNameRule);
}

void checkImageDigest(std::string_view value, std::string_view what) {
  if (!isImageDigest(value)) refuse(value, what, "must be `sha256:` and 64 lowercase hex characters");
}

std::string quotedForMessage(std::string_view value) {
  std::string out = "`";
  size_t kept = 0;
  for (unsigned char c : value) {
    if (kept++ == 64) {
      out += "…";
      break;
    }
    if (c < 0x20 || c == 0x7f || c == '`') {
      char escaped[8];
      std::snprintf(escaped, sizeof escaped, "\\x%02x", c);
      out += escaped;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "`";
}

}  // namespace migrate
