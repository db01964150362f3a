// A container's user namespace: container ids 0..size-1 are host ids
// hostId..hostId+size-1, the same mapping for uids and gids (podman's
// --userns=auto, Incus's idmap). Root in the container is an unprivileged
// uid on the host; the owner of the namespace (host root, the agent) holds
// every capability in it, which is what lets CRIU read the limits of a task
// that dropped to another uid without CAP_SYS_RESOURCE (docs/userns.md).
//
// Each host allocates mappings from one configured range (`--userns-range`,
// default 2^30 ids from host id 2^30). A container keeps its mapping across a
// migration: the target allocates the same one or refuses with Conflict
// before anything is touched (CRIU restores the user namespace with the maps
// its images hold, and the upper dir's files are stored in host ids).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace migrate {

// The ids one container gets: 65536, so that uid 65534 (nobody) exists in it.
constexpr uint32_t kIdMappingSize = 65536;

struct IdMapping {
  uint32_t hostId = 0;
  uint32_t size = kIdMappingSize;

  uint64_t end() const { return uint64_t{hostId} + size; }  // one past the last host id
  bool overlaps(const IdMapping& other) const { return hostId < other.end() && other.hostId < end(); }
  // "0:1073741824:65536" (container id, host id, count), as uid_map writes it.
  std::string text() const;
  nlohmann::json toJson() const;
  // Throws Error(InvalidInput) "`<what>`: …" for a malformed or empty mapping,
  // or one reaching past the last host id (2^32 - 2; 2^32 - 1 is "no id").
  static IdMapping fromJson(const nlohmann::json& json, const std::string& what);
  // The id a host id is in the container; one outside the mapping is what
  // the kernel shows for it there, the overflow id 65534.
  uint32_t toContainer(uint32_t host) const {
    return host >= hostId && host < end() ? host - hostId : kOverflowId;
  }
  // The host id of a container id; none past `size`.
  std::optional<uint32_t> toHost(uint32_t container) const {
    if (container >= size) return std::nullopt;
    return hostId + container;
  }
  bool operator==(const IdMapping&) const = default;

  static constexpr uint32_t kOverflowId = 65534;
};

// "0:H:S", or "none (the host's user namespace)", for messages.
std::string idMappingText(const std::optional<IdMapping>& mapping);

// Throws Error(Conflict) "user namespace mapping M of `name` overlaps
// `otherName`'s O<where>": the one refusal of a clash, wherever it is found
// (an agent's containers, its receivers, the coordinator's precheck).
[[noreturn]] void refuseOverlap(const IdMapping& mapping, const std::string& name, const IdMapping& other,
                                const std::string& otherName, const std::string& where);

// The host ids this agent gives containers: `first`..`first+count-1`.
struct IdRange {
  uint32_t first = 1u << 30;
  uint32_t count = 1u << 30;

  bool contains(const IdMapping& mapping) const {
    return mapping.hostId >= first && mapping.end() <= uint64_t{first} + count;
  }
  std::string text() const;  // "FIRST:COUNT"
  // "FIRST:COUNT"; throws Error(InvalidInput) when malformed, when it holds
  // fewer than kIdMappingSize ids, reaches past 2^32 - 2, or includes host
  // root (0).
  static IdRange parse(const std::string& text);
};

// A mapping in `range` that overlaps none of `taken`, as a slot of
// kIdMappingSize ids. The first slot tried is derived from `seed` (the
// container id), so that containers of different hosts rarely share one and
// a migration rarely finds its mapping taken on the target. Throws
// Error(Conflict) when every slot is taken.
IdMapping allocateIdMapping(const IdRange& range, const std::string& seed, const std::vector<IdMapping>& taken);

}  // namespace migrate
