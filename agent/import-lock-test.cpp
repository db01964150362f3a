#include "agent/import-lock.h"

#include <catch2/catch.hpp>

#include "common/error.h"
#include "common/files.h"

using namespace migrate;

TEST_CASE("an import lock is held once, across opens, and free again when its holder goes") {
  TempDir dir(fs::temp_directory_path(), "import-lock-test");
  {
    auto first = ImportLock::tryAcquire(dir.path());
    REQUIRE(first);
    CHECK_FALSE(ImportLock::tryAcquire(dir.path()));
  }
  CHECK(ImportLock::tryAcquire(dir.path()));
}

TEST_CASE("a name reservation refuses a second import of the name and goes with its holder") {
  TempDir state(fs::temp_directory_path(), "import-lock-test");
  {
    NameReservation web(state.path(), "web", "host1");
    try {
      NameReservation again(state.path(), "web", "host1");
      FAIL("a second reservation of `web` was granted");
    } catch (const Error& e) {
      CHECK(e.kind() == ErrorKind::Conflict);
      CHECK(std::string(e.what()).find("name `web` is in use on host1") != std::string::npos);
    }
    NameReservation other(state.path(), "db", "host1");
  }
  NameReservation web(state.path(), "web", "host1");
  CHECK_FALSE(fs::is_empty(state.path() / "names"));
}
