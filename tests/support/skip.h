// A test that cannot run here ends as skipped, and ctest shows it as not run
// rather than passed. Catch2 2.13 (Debian 12) has no SKIP() (Catch2 3.3 added
// it), so the tests' main (tests/catch-main.cpp) counts the test cases that
// skipped and, when every one that ran did, exits with Catch2 v3's status for
// that, 4; every folder's catch_discover_tests gives ctest that status as
// SKIP_RETURN_CODE. ctest runs one test case per process, so a skipped test
// case is one "Not Run" line.
#pragma once

#include <catch2/catch.hpp>
#include <string>

namespace migrate::test {

// The exit status of a run in which every test case that ran skipped.
inline constexpr int kSkippedExitStatus = 4;

// Whether a skip fails the test instead: as root in CI (CI=true, exported by
// .ci/run), where everything the tests need is installed, a skip would hide
// a machine that is not what the tests assume.
bool skipsFail();

// Records that the running test case skipped; SKIP_TEST calls it.
void noteSkipped();

}  // namespace migrate::test

// Ends the running test case (a void function: TEST_CASE's body) as skipped,
// naming why; as root in CI it fails instead.
#define SKIP_TEST(why)                                                                    \
  do {                                                                                    \
    const std::string migrateSkipReason_ = (why);                                         \
    if (::migrate::test::skipsFail()) FAIL("cannot skip as root in CI: " << migrateSkipReason_); \
    WARN("skipped: " << migrateSkipReason_);                                              \
    ::migrate::test::noteSkipped();                                                       \
    return;                                                                               \
  } while (0)
