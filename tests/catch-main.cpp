// The Catch2 main every test binary shares: Catch2's own session, plus the
// skip accounting of tests/support/skip.h (Catch2 2.13 has none of its own).
#define CATCH_CONFIG_RUNNER
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <string_view>

#include "tests/support/skip.h"

namespace {

// Catch2 runs test cases one at a time on the main thread; a test's own
// threads do not skip, so plain ints suffice.
bool currentSkipped = false;
int casesRun = 0;
int casesSkipped = 0;

class SkipCounter : public Catch::TestEventListenerBase {
 public:
  using TestEventListenerBase::TestEventListenerBase;
  void testCaseStarting(const Catch::TestCaseInfo& info) override {
    TestEventListenerBase::testCaseStarting(info);
    currentSkipped = false;
  }
  void testCaseEnded(const Catch::TestCaseStats& stats) override {
    TestEventListenerBase::testCaseEnded(stats);
    ++casesRun;
    casesSkipped += currentSkipped;
  }
};

}  // namespace

CATCH_REGISTER_LISTENER(SkipCounter)

namespace migrate::test {

bool skipsFail() {
  const char* ci = std::getenv("CI");
  return ci != nullptr && std::string_view(ci) == "true" && ::geteuid() == 0;
}

void noteSkipped() { currentSkipped = true; }

}  // namespace migrate::test

int main(int argc, char* argv[]) {
  Catch::Session session;
  if (int status = session.applyCommandLine(argc, argv); status != 0) return status;
  const auto& options = session.configData();
  // A listing's status is its count (catch_discover_tests reads the names).
  if (options.listTests || options.listTestNamesOnly || options.listTags || options.listReporters) return session.run();
  // Catch2 returns the number of failed assertions, which may be 4: any
  // failure is 1 here, so that it is never read as a skip.
  if (session.run() != 0) return 1;
  if (casesRun > 0 && casesSkipped == casesRun) return migrate::test::kSkippedExitStatus;
  return 0;
}
