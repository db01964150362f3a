#include "net/netns.h"

#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/files.h"
#include "common/subprocess.h"
#include "net/netns-lock.h"
#include "tests/support/skip.h"

using namespace migrate;

namespace {

bool isRoot() {
  return ::geteuid() == 0;
}

ino_t netnsInode(const char* path) {
  struct stat st {};
  REQUIRE(::stat(path, &st) == 0);
  return st.st_ino;
}

bool mountedAt(const fs::path& path) {
  return readFile("/proc/self/mountinfo").find(" " + path.string() + " ") != std::string::npos;
}

}  // namespace

TEST_CASE("createNetns binds a fresh netns and removeNetns leaves nothing") {
  if (!isRoot()) SKIP_TEST("network namespaces need root");
  TempDir dir("/tmp", "netns-test");
  auto path = dir.path() / "ns";
  CHECK_FALSE(netnsExists(path));
  {
    NetnsGuard ns(path);
    CHECK(netnsExists(path));
    CHECK(mountedAt(path));
    CHECK(netnsInode(path.c_str()) != netnsInode("/proc/self/ns/net"));
    // Ours is untouched by the thread that unshared.
    CHECK(netnsInode("/proc/thread-self/ns/net") == netnsInode("/proc/self/ns/net"));
    try {
      createNetns(path);
      FAIL("created twice");
    } catch (const Error& e) {
      CHECK(e.kind() == ErrorKind::Conflict);
    }
    CHECK(netnsExists(path));
  }
  CHECK_FALSE(fs::exists(path));
  CHECK_FALSE(mountedAt(path));
  removeNetns(path);  // absent: no-op

  // A plain file is not a netns.
  writeFileAtomic(path, "x");
  CHECK_FALSE(netnsExists(path));
  removeNetns(path);
  CHECK_FALSE(fs::exists(path));
}

TEST_CASE("runInNetns switches only its own thread, and its children") {
  if (!isRoot()) SKIP_TEST("network namespaces need root");
  TempDir dir("/tmp", "netns-test");
  NetnsGuard ns(dir.path() / "ns");
  ino_t outside = netnsInode("/proc/thread-self/ns/net");
  ino_t inside = 0;
  std::string links;
  runInNetns(ns.path(), [&]() {
    inside = netnsInode("/proc/thread-self/ns/net");
    links = run({"ip", "-j", "link", "show"});
  });
  CHECK(inside == netnsInode(ns.path().c_str()));
  CHECK(inside != outside);
  CHECK(netnsInode("/proc/thread-self/ns/net") == outside);
  // A fresh netns has only loopback, and createNetns brought it up.
  auto j = nlohmann::json::parse(links);
  REQUIRE(j.size() == 1);
  CHECK(j[0]["ifname"] == "lo");
  auto flags = j[0]["flags"];
  CHECK(std::find(flags.begin(), flags.end(), "UP") != flags.end());

  CHECK_THROWS_WITH(runInNetns(ns.path(), []() { fail(ErrorKind::Conflict, "inside"); }), "inside");
  try {
    runInNetns(dir.path() / "missing", []() {});
    FAIL("entered a missing netns");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::NotFound);
  }
  CHECK(netnsCommandPrefix(ns.path()) == std::vector<std::string>{"nsenter", "--net=" + ns.path().string(), "--"});
  auto viaPrefix = netnsCommandPrefix(ns.path());
  viaPrefix.insert(viaPrefix.end(), {"stat", "-L", "-c", "%i", "/proc/self/ns/net"});
  CHECK(std::stoul(run(viaPrefix)) == inside);
}

TEST_CASE("the netns lock installs and removes its nftables table") {
  if (!isRoot()) SKIP_TEST("network namespaces need root");
  TempDir dir("/tmp", "netns-test");
  NetnsGuard ns(dir.path() / "ns");
  CHECK_FALSE(isNetnsLocked(ns.path()));
  unlockNetns(ns.path());  // idempotent
  {
    NetnsLockGuard lock(ns.path());
    CHECK(isNetnsLocked(ns.path()));
    lockNetns(ns.path());  // again: replaced, not doubled
    std::string rules;
    runInNetns(ns.path(), [&]() { rules = run({"nft", "list", "ruleset"}); });
    // nft prints priority -300 by its name.
    CHECK(rules.find("hook input priority raw; policy drop;") != std::string::npos);
    // Output stays open: the restored sockets' first retransmissions must leave.
    CHECK(rules.find("hook output") == std::string::npos);
    CHECK(rules.find("iif \"lo\" accept") != std::string::npos);
    CHECK(rules.find("table inet migrate_lock") == rules.rfind("table inet migrate_lock"));
    // Loopback still works inside a locked netns.
    SubprocessOptions ping;
    ping.args = {"ping", "-c1", "-W1", "127.0.0.1"};
    int status = -1;
    runInNetns(ns.path(), [&]() { status = runCapture(ping).status; });
    CHECK(status == 0);
  }
  CHECK_FALSE(isNetnsLocked(ns.path()));
  unlockNetns(ns.path());
  unlockNetns(dir.path() / "missing");  // a netns that is gone holds no lock

  NetnsLockGuard kept(ns.path());
  kept.unlock();
  CHECK_FALSE(isNetnsLocked(ns.path()));
}
