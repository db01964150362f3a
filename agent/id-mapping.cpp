#include "agent/id-mapping.h"

#include <algorithm>
#include <charconv>

#include "common/error.h"
#include "common/hash-stream.h"

namespace migrate {

using nlohmann::json;

namespace {

constexpr uint64_t kNoId = 0xffffffffull;  // (uid_t)-1

std::optional<uint32_t> parseId(std::string_view text) {
  uint64_t value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size() || text.empty() || value >= kNoId) return std::nullopt;
  return static_cast<uint32_t>(value);
}

}  // namespace

std::string IdMapping::text() const { return "0:" + std::to_string(hostId) + ":" + std::to_string(size); }

json IdMapping::toJson() const { return {{"hostId", hostId}, {"size", size}}; }

IdMapping IdMapping::fromJson(const json& j, const std::string& what) {
  auto number = [&](const char* key) -> uint64_t {
    if (!j.is_object() || !j.contains(key) || !j[key].is_number_integer() || j[key].get<int64_t>() < 0) {
      fail(ErrorKind::InvalidInput, "`" + what + "`: `" + key + "` must be an unsigned number");
    }
    return j[key].get<uint64_t>();
  };
  uint64_t hostId = number("hostId"), size = number("size");
  if (size == 0) fail(ErrorKind::InvalidInput, "`" + what + "`: maps no id");
  if (hostId + size > kNoId) {
    fail(ErrorKind::InvalidInput, "`" + what + "`: host ids " + std::to_string(hostId) + "+" + std::to_string(size) +
                                      " reach past the last id " + std::to_string(kNoId - 1));
  }
  return IdMapping{static_cast<uint32_t>(hostId), static_cast<uint32_t>(size)};
}

std::string idMappingText(const std::optional<IdMapping>& mapping) {
  return mapping ? mapping->text() : std::string("none (the host's user namespace)");
}

void refuseOverlap(const IdMapping& mapping, const std::string& name, const IdMapping& other,
                   const std::string& otherName, const std::string& where) {
  fail(ErrorKind::Conflict, "user namespace mapping " + mapping.text() + " of `" + name + "` overlaps `" + otherName +
                                "`'s " + other.text() + where);
}

std::string IdRange::text() const { return std::to_string(first) + ":" + std::to_string(count); }

IdRange IdRange::parse(const std::string& text) {
  auto colon = text.find(':');
  auto first = parseId(std::string_view(text).substr(0, colon));
  auto count = colon == std::string::npos ? std::nullopt : parseId(std::string_view(text).substr(colon + 1));
  if (!first || !count) fail(ErrorKind::InvalidInput, "user namespace range `" + text + "` is not FIRST:COUNT");
  if (*first == 0) fail(ErrorKind::InvalidInput, "user namespace range `" + text + "` includes host root (id 0)");
  if (*count < kIdMappingSize) {
    fail(ErrorKind::InvalidInput, "user namespace range `" + text + "` holds fewer than " +
                                      std::to_string(kIdMappingSize) + " ids, one container's");
  }
  if (uint64_t{*first} + *count > kNoId) {
    fail(ErrorKind::InvalidInput, "user namespace range `" + text + "` reaches past the last id " + std::to_string(kNoId - 1));
  }
  return IdRange{*first, *count};
}

IdMapping allocateIdMapping(const IdRange& range, const std::string& seed, const std::vector<IdMapping>& taken) {
  uint64_t slots = range.count / kIdMappingSize;
  // The first 8 bytes of SHA-256(seed): spread, and the same for the same container.
  uint64_t start = std::stoull(sha256Hex(seed).substr(0, 16), nullptr, 16) % slots;
  for (uint64_t i = 0; i < slots; ++i) {
    uint64_t slot = (start + i) % slots;
    IdMapping candidate{static_cast<uint32_t>(range.first + slot * kIdMappingSize), kIdMappingSize};
    bool free = std::none_of(taken.begin(), taken.end(), [&](auto& t) { return t.overlaps(candidate); });
    if (free) return candidate;
  }
  fail(ErrorKind::Conflict, "every user namespace mapping of range " + range.text() + " is taken (" +
                                std::to_string(slots) + " of " + std::to_string(kIdMappingSize) + " ids)");
}

}  // namespace migrate
