#include "common/syscall.h"

#include <fcntl.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <string>

using namespace migrate;

TEST_CASE("SYSCALL names the call, its description and where it was made") {
  int line = 0;
  try {
    line = __LINE__ + 1;
    SYSCALL(::open("/nonexistent/x", O_RDONLY | O_CLOEXEC), "open", "/nonexistent/x");
    FAIL("open succeeded");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::NotFound);
    CHECK(std::string(e.what()) == "open /nonexistent/x: No such file or directory (open(\"/nonexistent/x\", "
                                   "O_RDONLY | O_CLOEXEC) at common/syscall-test.cpp:" +
                                       std::to_string(line) + ")");
  }
}

TEST_CASE("SYSCALL without a description leads with the call") {
  try {
    SYSCALL(::close(-1));
    FAIL("close(-1) succeeded");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::Failed);  // EBADF
    CHECK_THAT(e.what(), Catch::StartsWith("close(-1): Bad file descriptor (at common/syscall-test.cpp:"));
  }
}

TEST_CASE("SYSCALL keeps the error context and returns the call's result") {
  int fds[2];
  CHECK(SYSCALL(::pipe2(fds, O_CLOEXEC), "pipe2") == 0);
  CHECK(SYSCALL(::write(fds[1], "ab", 2), "write") == 2);
  ::close(fds[0]);
  ::close(fds[1]);
  try {
    ErrorContext context("storage of `web`");
    SYSCALL(::unlink("/nonexistent/x"), "unlink", "/nonexistent/x");
    FAIL("unlink succeeded");
  } catch (const Error& e) {
    CHECK_THAT(e.what(), Catch::StartsWith("storage of `web`: unlink /nonexistent/x: No such file or directory ("));
  }
}

TEST_CASE("long calls are shortened to the arguments that fit") {
  using detail::abbreviateCall;
  CHECK(abbreviateCall("::read(fd, buf, len)") == "read(fd, buf, len)");
  CHECK(abbreviateCall("ready") == "ready");
  CHECK(abbreviateCall("::openat(dirFd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)") ==
        "openat(dirFd, name.c_str(), ...)");
  // A comma inside a nested call is not an argument boundary.
  CHECK(abbreviateCall("::mount(f(a, b), path.c_str(), \"overlay\", MS_NOSUID | MS_NODEV, options.c_str())") ==
        "mount(f(a, b), path.c_str(), \"overlay\", ...)");
  CHECK(abbreviateCall("sys::openTree(std::string(\"a very long first argument that never ends\").c_str(), 0)") ==
        "sys::openTree(...)");
}
