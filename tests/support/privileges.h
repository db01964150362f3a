// Whether this process can run tests that need root, runc, conmon and CRIU,
// and the macro that skips such a test (with the reason) where it cannot.
// Shared by the integration tests and the agent's unit tests that make real
// checkpoints.
#pragma once

#include <optional>
#include <string>

namespace migrate::test {

// Why a test that needs root, runc and CRIU cannot run here, or nullopt.
std::optional<std::string> missingPrivileges();

}  // namespace migrate::test

// Returns from the test (with a warning naming the reason) where it cannot
// run: not root, or runc/conmon/CRIU missing. CI has them all.
#define REQUIRE_PRIVILEGES()                                      \
  do {                                                            \
    if (auto why = ::migrate::test::missingPrivileges()) {        \
      WARN("skipped: " << *why);                                  \
      return;                                                     \
    }                                                             \
  } while (0)
