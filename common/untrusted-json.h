// JSON from outside this host (a bundle's manifest, config.dump, spec.dump,
// network.status, signature; an HTTP request body), parsed with its nesting
// bounded. nlohmann's parser itself is iterative, but copying, comparing or
// dumping a value recurses once per level: a 1 MiB document of `[` is half a
// million levels, far past a thread's stack.
#pragma once

#include <cstddef>
#include <string_view>

#include <nlohmann/json.hpp>

namespace migrate {

constexpr size_t kMaxUntrustedJsonDepth = 64;

// Throws Error(InvalidInput) "<what>: nests deeper than the limit of N
// levels" or "<what>: not valid JSON (…)".
nlohmann::json parseUntrustedJson(std::string_view text, std::string_view what,
                                  size_t maxDepth = kMaxUntrustedJsonDepth);

}  // namespace migrate
