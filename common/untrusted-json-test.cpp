#include "common/untrusted-json.h"

#include <catch2/catch.hpp>

#include "common/error.h"

using namespace migrate;
using Catch::Matchers::Contains;

TEST_CASE("untrusted json: nesting is bounded before anything deep is built") {
  CHECK(parseUntrustedJson(R"({"a": "[[[[\"[[[[", "b": [[1]]})", "body", 3)["b"][0][0] == 1);
  CHECK_THROWS_WITH(parseUntrustedJson(R"({"a": "]]]]", "b": [[1]]})", "body", 2),
                    Contains("body: nests deeper than the limit of 2 levels"));
  // Half a million levels in 1 MiB: refused, no stack spent on it.
  std::string deep(1 << 19, '[');
  deep += std::string(1 << 19, ']');
  CHECK_THROWS_WITH(parseUntrustedJson(deep, "spec.dump"), Contains("spec.dump: nests deeper than the limit of 64"));
  CHECK_THROWS_WITH(parseUntrustedJson("{\"a\": ", "config.dump"), Contains("config.dump: not valid JSON"));
  CHECK(parseUntrustedJson(std::string(63, '[') + std::string(63, ']'), "x").is_array());
}
