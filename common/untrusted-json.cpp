#include "common/untrusted-json.h"

#include "common/error.h"

namespace migrate {

using nlohmann::json;

nlohmann::json parseUntrustedJson(std::string_view text, std::string_view what, size_t maxDepth) {
  // The callback sees each container as it opens, with the number of
  // containers already open around it: refuse before it is built.
  auto bounded = [&](int depth, json::parse_event_t event, json&) {
    if ((event == json::parse_event_t::object_start || event == json::parse_event_t::array_start) &&
        static_cast<size_t>(depth) >= maxDepth) {
      fail(ErrorKind::InvalidInput,
           std::string(what) + ": nests deeper than the limit of " + std::to_string(maxDepth) + " levels");
    }
    return true;
  };
  try {
    return json::parse(text, bounded);
  } catch (const json::parse_error& e) {
    fail(ErrorKind::InvalidInput, std::string(what) + ": not valid JSON (" + e.what() + ")");
  }
}

}  // namespace migrate
