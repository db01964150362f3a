// JSON from outside this host (a bundle's manifest, config.dump, spec.dump,
// network.status, signature; an HTTP request body), parsed with its nesting
// bounded. nlohmann's parser itself is iterative, but copying, comparing or
// dumping a value recurses once per level: a 1 MiB document of `[` is half a
// million levels, far past a thread's stack.
#pragma once

#include <cstddef>
#include <string_view>

#include <nlohmann/json.hpp>

#include "common/error.h"

namespace migrate {

constexpr size_t kMaxUntrustedJsonDepth = 64;

// Throws Error(InvalidInput) "<what>: nests deeper than the limit of N
// levels" or "<what>: not valid JSON (…)".
nlohmann::json parseUntrustedJson(std::string_view text, std::string_view what,
                                  size_t maxDepth = kMaxUntrustedJsonDepth);

// Field `name` of an untrusted object as a T: `fallback` when absent or null
// (or `object` is no object), Error(InvalidInput) naming the field when it
// has another type, rather than the library's own message.
template <typename T>
T jsonField(const nlohmann::json& object, const char* name, T fallback) {
  if (!object.is_object()) return fallback;
  auto it = object.find(name);
  if (it == object.end() || it->is_null()) return fallback;
  try {
    return it->template get<T>();
  } catch (const nlohmann::json::exception&) {
    fail(ErrorKind::InvalidInput, std::string("field `") + name + "` has the wrong type");
  }
}

}  // namespace migrate
