#include "common/error.h"

#include <catch2/catch.hpp>
#include <cerrno>

using namespace migrate;

TEST_CASE("error context frames prefix the message once per scope") {
  try {
    ErrorContext outer("restore of `web`");
    ErrorContext inner("criu");
    fail(ErrorKind::Failed, "boom");
  } catch (const Error& e) {
    CHECK(std::string(e.what()) == "restore of `web`: criu: boom");
    CHECK(e.kind() == ErrorKind::Failed);
  }
  // Frames are gone after their scope.
  try {
    fail(ErrorKind::NotFound, "x");
  } catch (const Error& e) {
    CHECK(std::string(e.what()) == "x");
  }
}

TEST_CASE("errno maps to error kinds") {
  auto kindFor = [](int err) {
    try {
      failErrno(err, "op");
    } catch (const Error& e) {
      return e.kind();
    }
    return ErrorKind::Failed;
  };
  CHECK(kindFor(ENOSPC) == ErrorKind::Overloaded);
  CHECK(kindFor(ENOENT) == ErrorKind::NotFound);
  CHECK(kindFor(EEXIST) == ErrorKind::Conflict);
  CHECK(kindFor(ECONNRESET) == ErrorKind::Disconnected);
  CHECK(kindFor(EIO) == ErrorKind::Failed);
}

TEST_CASE("kind names round-trip") {
  for (auto k : {ErrorKind::Failed, ErrorKind::Overloaded, ErrorKind::Disconnected, ErrorKind::Unimplemented,
                 ErrorKind::InvalidInput, ErrorKind::NotFound, ErrorKind::Conflict}) {
    CHECK(kindFromName(kindName(k)) == k);
  }
}
