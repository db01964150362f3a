#include "common/subprocess.h"

#include <signal.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include "common/error.h"

using namespace migrate;

TEST_CASE("run captures stdout and feeds stdin") {
  SubprocessOptions o;
  o.args = {"cat"};
  std::string big(1 << 20, 'x');  // Larger than a pipe: needs concurrent feed and drain.
  CHECK(run(o, big) == big);
}

TEST_CASE("run quotes the command and its stderr on failure") {
  try {
    run({"sh", "-c", "echo nope >&2; exit 3"});
    FAIL("no throw");
  } catch (const Error& e) {
    std::string m = e.what();
    CHECK(m.find("exited with status 3") != std::string::npos);
    CHECK(m.find("nope") != std::string::npos);
  }
}

TEST_CASE("a missing program is a NotFound error naming it") {
  try {
    run({"/nonexistent/program"});
    FAIL("no throw");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::NotFound);
    CHECK(std::string(e.what()).find("/nonexistent/program") != std::string::npos);
  }
}

TEST_CASE("env, cwd and passed fds reach the child") {
  int p[2];
  REQUIRE(pipe(p) == 0);
  SubprocessOptions o;
  o.args = {"sh", "-c", "echo \"$FOO $(pwd)\"; echo hi >&3"};
  o.env = {{"FOO", "bar"}};
  o.cwd = "/tmp";
  o.passFds = {p[1]};
  CHECK(run(o) == "bar /tmp\n");
  close(p[1]);
  char buf[8] = {};
  CHECK(read(p[0], buf, sizeof buf) == 3);
  CHECK(std::string(buf) == "hi\n");
  close(p[0]);
}

TEST_CASE("a subprocess is killed and reaped when its guard dies") {
  pid_t pid;
  {
    SubprocessOptions o;
    o.args = {"sleep", "100"};
    Subprocess child(o);
    pid = child.pid();
    CHECK(::kill(pid, 0) == 0);
  }
  CHECK(::kill(pid, 0) == -1);
}
