#include "common/error.h"

#include <catch2/catch.hpp>
#include <cerrno>
#include <filesystem>
#include <ios>
#include <system_error>

#include "common/files.h"

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
                 ErrorKind::InvalidInput, ErrorKind::NotFound, ErrorKind::Conflict, ErrorKind::Cancelled}) {
    CHECK(kindFromName(kindName(k)) == k);
  }
}

TEST_CASE("filesystem and system errors map to kinds as errno does") {
  auto fsError = [](int err) { return fs::filesystem_error("op", std::error_code(err, std::generic_category())); };
  CHECK(kindOf(fsError(ENOSPC)) == ErrorKind::Overloaded);
  CHECK(kindOf(fsError(ENOMEM)) == ErrorKind::Overloaded);
  CHECK(kindOf(fsError(EMFILE)) == ErrorKind::Overloaded);
  CHECK(kindOf(fsError(ENOENT)) == ErrorKind::NotFound);
  CHECK(kindOf(fsError(EEXIST)) == ErrorKind::Conflict);
  CHECK(kindOf(fsError(EBUSY)) == ErrorKind::Conflict);
  CHECK(kindOf(fsError(EIO)) == ErrorKind::Failed);
  // std::system_error as thrown by std::thread or std::mutex: the system category.
  CHECK(kindOf(std::system_error(EAGAIN, std::system_category(), "thread")) == ErrorKind::Overloaded);
  CHECK(kindOf(std::system_error(ECONNRESET, std::system_category())) == ErrorKind::Disconnected);
  // Codes that are not errno values say nothing about what to do.
  CHECK(kindOf(std::system_error(std::make_error_code(std::io_errc::stream))) == ErrorKind::Failed);
  CHECK(kindOf(std::runtime_error("plain")) == ErrorKind::Failed);
}

TEST_CASE("one errno mapping for failErrno, error codes and filesystem errors") {
  for (int err = 1; err < 134; ++err) {
    INFO("errno " << err);
    ErrorKind thrown = ErrorKind::Failed;
    try {
      failErrno(err, "op");
    } catch (const Error& e) {
      thrown = e.kind();
    }
    CHECK(thrown == kindOfErrno(err));
    CHECK(kindOfErrorCode(std::error_code(err, std::system_category())) == thrown);
    CHECK(kindOf(fs::filesystem_error("op", std::error_code(err, std::generic_category()))) == thrown);
  }
}

TEST_CASE("errors from real std filesystem calls carry their kind") {
  TempDir dir("/tmp", "error-test");
  try {
    fs::create_directory(dir.path() / "missing" / "child");
    FAIL("created a directory below a missing one");
  } catch (const fs::filesystem_error& e) {
    CHECK(kindOf(e) == ErrorKind::NotFound);
  }
  fs::create_directory(dir.path() / "taken");
  try {
    fs::create_directory_symlink("/", dir.path() / "taken");
    FAIL("made a symlink over a directory");
  } catch (const fs::filesystem_error& e) {
    CHECK(kindOf(e) == ErrorKind::Conflict);
  }
}
