// Whether this process can run tests that need root, runc, conmon and CRIU,
// and the macro that skips such a test (with the reason) where it cannot.
// Shared by the integration tests and the agent's unit tests that make real
// checkpoints.
#pragma once

#include <optional>
#include <string>

#include "tests/support/skip.h"

namespace migrate::test {

// Why a test that needs root, runc and CRIU cannot run here, or nullopt.
std::optional<std::string> missingPrivileges();

}  // namespace migrate::test

// Skips the test (tests/support/skip.h: ctest shows it as not run) where it
// cannot run: not root, or runc/conmon/CRIU missing. CI has them all, so
// there it fails instead.
#define REQUIRE_PRIVILEGES()                                   \
  do {                                                         \
    if (auto why = ::migrate::test::missingPrivileges()) {     \
      SKIP_TEST(*why);                                         \
    }                                                          \
  } while (0)
