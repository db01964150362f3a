// CNI client, netns lock and ARP announce against the real plugins
// (/usr/lib/cni) on the multi-host lab (scripts/lab.sh up 2).
#include "net/cni.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdlib>

#include "common/error.h"
#include "common/files.h"
#include "common/subprocess.h"
#include "net/announce.h"
#include "net/netns-lock.h"
#include "net/netns.h"
#include "tests/support/skip.h"
#include "tests/support/wait.h"

using namespace migrate;
using nlohmann::json;

namespace {

// Why the lab cannot run here, or nullopt.
std::optional<std::string> whyNoLab() {
  if (::geteuid() != 0) return "the lab needs root";
  if (::access("/usr/lib/cni/bridge", X_OK) != 0) return "no CNI plugins in /usr/lib/cni (containernetworking-plugins)";
  return std::nullopt;
}

fs::path labScript() {
  if (const char* env = std::getenv("MIGRATE_LAB_SH")) return env;
  return fs::path(__FILE__).parent_path().parent_path() / "scripts" / "lab.sh";
}

void lab(const std::vector<std::string>& args) {
  SubprocessOptions options;
  options.args = {labScript().string()};
  options.args.insert(options.args.end(), args.begin(), args.end());
  options.env = {{"LAB_QUIET", "1"}};
  run(options);
}

// The lab for one test: up on construction, down when it dies. Tests that use
// the lab (here, tests/lab-test.sh, integration tests) take the same
// exclusive session lock, since each brings the shared lab down at its end.
class LabSession {
 public:
  explicit LabSession(int hosts) {
    lock_ = Fd(::open("/run/lock/migrate-lab-session.lock", O_RDWR | O_CREAT | O_CLOEXEC, 0644));
    REQUIRE(lock_);
    REQUIRE(::flock(lock_.get(), LOCK_EX) == 0);
    lab({"up", std::to_string(hosts)});
  }
  ~LabSession() {
    try {
      lab({"down"});
    } catch (const std::exception& e) {
      WARN("lab.sh down: " << e.what());
    }
  }
  static fs::path netns(const std::string& name) { return "/run/netns/" + name; }
  static CniNetwork network(int host) {
    return CniNetwork::load("/run/migrate-lab/host" + std::to_string(host) + "/cni.conflist");
  }
  // One host-local store for the whole segment, shared by every host (lab.sh).
  static fs::path ipamStore(int /*host*/) { return "/run/migrate-lab/ipam/migrate-lab"; }

 private:
  Fd lock_;
};

RunResult runIn(const fs::path& netns, const std::vector<std::string>& args) {
  SubprocessOptions options;
  options.args = args;
  RunResult result;
  runInNetns(netns, [&]() { result = runCapture(options); });
  return result;
}

bool pingFromClient(const std::string& ip) {
  return runIn(LabSession::netns("client"), {"ping", "-c1", "-W1", ip}).status == 0;
}

// `ip -j addr show dev eth0` inside a container netns.
json containerEth0(const fs::path& netns) {
  auto r = runIn(netns, {"ip", "-j", "addr", "show", "dev", "eth0"});
  if (r.status != 0) return nullptr;
  auto j = json::parse(r.out);
  return j.empty() ? json(nullptr) : j[0];
}

std::vector<std::string> ipv4sOf(const json& link) {
  std::vector<std::string> out;
  if (link.is_null()) return out;
  for (auto& a : link["addr_info"]) {
    if (a["family"] == "inet")
      out.push_back(a["local"].get<std::string>() + "/" + std::to_string(a["prefixlen"].get<int>()));
  }
  return out;
}

unsigned lastOctet(const std::string& ip) {
  return static_cast<unsigned>(std::stoul(ip.substr(ip.rfind('.') + 1)));
}

std::string uniqueId(const std::string& what) {
  return "net-test-" + std::to_string(::getpid()) + "-" + what;
}

// A container's netns plus its CNI attachment, detached and removed when it dies.
class TestContainer {
 public:
  TestContainer(const fs::path& dir, CniClient& client, CniNetwork network, std::string id)
      : client_(client), network_(std::move(network)), ns_(dir / id) {
    attachment_.containerId = std::move(id);
    attachment_.netns = ns_.path();
  }
  ~TestContainer() {
    try {
      if (attached_) client_.del(network_, attachment_, std::nullopt);
    } catch (const std::exception& e) {
      WARN("cni del: " << e.what());
    }
  }
  CniResult add(std::optional<std::string> ip = std::nullopt, std::optional<std::string> mac = std::nullopt) {
    attachment_.ip = std::move(ip);
    attachment_.mac = std::move(mac);
    auto result = client_.add(network_, attachment_);
    attached_ = true;
    return result;
  }
  void del() {
    client_.del(network_, attachment_, std::nullopt);
    attached_ = false;
  }
  const CniAttachment& attachment() const { return attachment_; }
  const CniNetwork& network() const { return network_; }
  const fs::path& netns() const { return ns_.path(); }

 private:
  CniClient& client_;
  CniNetwork network_;
  NetnsGuard ns_;
  CniAttachment attachment_;
  bool attached_ = false;
};

}  // namespace

TEST_CASE("CniNetwork loads conflists and rejects bad ones") {
  auto net = CniNetwork::parse(R"({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "bridge"}]})", "test");
  CHECK(net.name == "n");
  CHECK(net.cniVersion == "1.0.0");
  CHECK(net.conflist["plugins"].size() == 1);

  // A single-plugin .conf becomes a one-entry conflist.
  auto single = CniNetwork::parse(R"({"cniVersion": "0.4.0", "name": "s", "type": "bridge", "bridge": "b0"})", "test");
  REQUIRE(single.conflist["plugins"].size() == 1);
  CHECK(single.conflist["plugins"][0]["bridge"] == "b0");
  CHECK_FALSE(single.conflist["plugins"][0].contains("name"));

  auto kindOf = [](const std::string& text) {
    try {
      CniNetwork::parse(text, "test");
    } catch (const Error& e) {
      return e.kind();
    }
    return ErrorKind::Failed;
  };
  CHECK(kindOf("nope") == ErrorKind::InvalidInput);
  CHECK(kindOf(R"({"cniVersion": "1.0.0", "plugins": [{"type": "bridge"}]})") == ErrorKind::InvalidInput);
  CHECK(kindOf(R"({"name": "n", "plugins": [{"type": "bridge"}]})") == ErrorKind::InvalidInput);
  CHECK(kindOf(R"({"cniVersion": "1.0.0", "name": "n", "plugins": []})") == ErrorKind::InvalidInput);
  CHECK(kindOf(R"({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "../../bin/sh"}]})") ==
        ErrorKind::InvalidInput);
  CHECK(kindOf(R"({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "x", "capabilities": []}]})") ==
        ErrorKind::InvalidInput);
  CHECK_THROWS_WITH(CniNetwork::parse(R"({"cniVersion": "1.0.0", "plugins": []})", "`x.conflist`"),
                    "cni: network config `x.conflist`: `name` is missing");
  try {
    CniNetwork::load("/nonexistent/x.conflist");
    FAIL("loaded a missing file");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::NotFound);
  }
}

TEST_CASE("CniClient refuses what the network can't honour and plugins it can't find") {
  if (::geteuid() != 0) SKIP_TEST("network namespaces need root");
  TempDir dir("/tmp", "cni-test");
  NetnsGuard ns(dir.path() / "ns");
  CniClient client({dir.path()}, dir.path() / "cache");
  CniAttachment a{"ctr", ns.path(), "eth0", "198.18.0.30", std::nullopt};
  auto noCaps = CniNetwork::parse(R"({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "bridge"}]})", "test");
  try {
    client.add(noCaps, a);
    FAIL("added");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::Unimplemented);
  }
  a.ip.reset();
  try {
    client.add(noCaps, a);
    FAIL("added");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::NotFound);
    CHECK(std::string(e.what()).find("plugin `bridge` not found") != std::string::npos);
  }
  a.containerId = "../etc";
  CHECK_THROWS_AS(client.add(noCaps, a), Error);
}

TEST_CASE("CNI ADD on a lab host: reachable from the client, CHECK passes, DEL cleans up") {
  if (auto why = whyNoLab()) SKIP_TEST(*why);
  LabSession session(2);
  TempDir dir("/tmp", "cni-test");
  CniClient client({"/usr/lib/cni"}, dir.path() / "cache", LabSession::netns("host1"));
  TestContainer ctr(dir.path(), client, LabSession::network(1), uniqueId("a"));

  auto result = ctr.add();
  auto ip = requestedIp({result});
  REQUIRE(ip);
  CHECK(ip->rfind("198.18.0.", 0) == 0);
  CHECK(lastOctet(*ip) >= 21);  // host1's range
  CHECK(lastOctet(*ip) <= 39);
  CHECK(requestedMac({result}));
  CHECK(ipv4sOf(containerEth0(ctr.netns())) == std::vector<std::string>{*ip + "/24"});
  CHECK(fs::exists(LabSession::ipamStore(1) / *ip));
  CHECK(client.cachedResult(ctr.network(), ctr.attachment()));
  CHECK(pingFromClient(*ip));

  client.check(ctr.network(), ctr.attachment(), result);

  ctr.del();
  CHECK(containerEth0(ctr.netns()).is_null());
  CHECK_FALSE(fs::exists(LabSession::ipamStore(1) / *ip));
  CHECK_FALSE(client.cachedResult(ctr.network(), ctr.attachment()));
  CHECK_FALSE(pingFromClient(*ip));
  // Already gone: DEL still succeeds, also without the netns.
  client.del(ctr.network(), ctr.attachment(), result);
  removeNetns(ctr.netns());
  client.del(ctr.network(), ctr.attachment(), std::nullopt);
}

TEST_CASE("CNI ADD honours a requested IP and MAC from another host's range") {
  if (auto why = whyNoLab()) SKIP_TEST(*why);
  LabSession session(2);
  TempDir dir("/tmp", "cni-test");
  CniClient client({"/usr/lib/cni"}, dir.path() / "cache", LabSession::netns("host2"));
  // 198.18.0.30 is in host1's range: a container migrating from host1 to host2.
  TestContainer moved(dir.path(), client, LabSession::network(2), uniqueId("moved"));
  auto result = moved.add("198.18.0.30", "02:42:c6:12:00:1e");
  CHECK(requestedIp({result}) == "198.18.0.30");
  CHECK(requestedMac({result}) == "02:42:c6:12:00:1e");
  auto eth0 = containerEth0(moved.netns());
  CHECK(ipv4sOf(eth0) == std::vector<std::string>{"198.18.0.30/24"});
  CHECK(eth0["address"] == "02:42:c6:12:00:1e");
  CHECK(pingFromClient("198.18.0.30"));
  client.check(moved.network(), moved.attachment(), result);

  // The next plain ADD on host2 stays in host2's own range.
  TestContainer plain(dir.path(), client, LabSession::network(2), uniqueId("plain"));
  auto ip = requestedIp({plain.add()});
  REQUIRE(ip);
  CHECK(lastOctet(*ip) >= 41);
  CHECK(lastOctet(*ip) <= 59);

  // And a requested address in the host's own range, too.
  TestContainer own(dir.path(), client, LabSession::network(2), uniqueId("own"));
  CHECK(requestedIp({own.add("198.18.0.55")}) == "198.18.0.55");
}

TEST_CASE("CNI ADD of an address already taken on the host is a Conflict and leaves nothing") {
  if (auto why = whyNoLab()) SKIP_TEST(*why);
  LabSession session(2);
  TempDir dir("/tmp", "cni-test");
  CniClient client({"/usr/lib/cni"}, dir.path() / "cache", LabSession::netns("host1"));
  TestContainer first(dir.path(), client, LabSession::network(1), uniqueId("first"));
  first.add("198.18.0.33");
  TestContainer second(dir.path(), client, LabSession::network(1), uniqueId("second"));
  try {
    second.add("198.18.0.33");
    FAIL("the same address was given twice");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::Conflict);
    std::string message = e.what();
    INFO(message);
    CHECK(message.rfind("cni: bridge ADD for `" + second.attachment().containerId + "` failed: ", 0) == 0);
    CHECK(message.find("198.18.0.33") != std::string::npos);
  }
  // The failed ADD was undone (the bridge plugin had made eth0 already)...
  CHECK(containerEth0(second.netns()).is_null());
  // ...without touching the first container's reservation.
  CHECK(fs::exists(LabSession::ipamStore(1) / "198.18.0.33"));
  CHECK(pingFromClient("198.18.0.33"));
}

TEST_CASE("the netns lock drops a container's traffic until unlocked") {
  if (auto why = whyNoLab()) SKIP_TEST(*why);
  LabSession session(2);
  TempDir dir("/tmp", "cni-test");
  CniClient client({"/usr/lib/cni"}, dir.path() / "cache", LabSession::netns("host1"));
  TestContainer ctr(dir.path(), client, LabSession::network(1), uniqueId("locked"));
  // As a restore does it: lock the fresh netns first, then let the address appear.
  NetnsLockGuard lock(ctr.netns());
  auto ip = requestedIp({ctr.add()});
  REQUIRE(ip);
  CHECK_FALSE(pingFromClient(*ip));
  CHECK(runIn(ctr.netns(), {"ping", "-c1", "-W1", "198.18.0.1"}).status != 0);
  CHECK(runIn(ctr.netns(), {"ping", "-c1", "-W1", "127.0.0.1"}).status == 0);
  lock.unlock();
  CHECK(pingFromClient(*ip));
  CHECK(runIn(ctr.netns(), {"ping", "-c1", "-W1", "198.18.0.1"}).status == 0);
}

TEST_CASE("announceAddress updates the client's neighbour entry") {
  if (auto why = whyNoLab()) SKIP_TEST(*why);
  LabSession session(2);
  TempDir dir("/tmp", "cni-test");
  CniClient client({"/usr/lib/cni"}, dir.path() / "cache", LabSession::netns("host2"));
  TestContainer ctr(dir.path(), client, LabSession::network(2), uniqueId("announce"));
  const std::string ip = "198.18.0.44", mac = "02:42:c6:12:00:2c";
  ctr.add(ip, mac);
  // The client believes the address lives elsewhere (as after a migration,
  // before any traffic): a stale entry that only an announcement corrects.
  auto clientNs = LabSession::netns("client");
  REQUIRE(runIn(clientNs, {"ip", "neigh", "replace", ip, "lladdr", "02:00:00:00:00:99", "dev", "eth0", "nud", "stale"})
              .status == 0);

  announceAddress(ctr.netns(), "eth0", ip);

  std::string lladdr;
  migrate::test::waitUntil([&] {  // delivery is asynchronous
    auto neigh = json::parse(runIn(clientNs, {"ip", "-j", "neigh", "show", ip, "dev", "eth0"}).out);
    lladdr = neigh.empty() ? "" : neigh[0].value("lladdr", "");
    return lladdr == mac;
  }, std::chrono::seconds(5));
  CHECK(lladdr == mac);
  CHECK_THROWS_AS(announceAddress(ctr.netns(), "nosuch0", ip), Error);
  CHECK_THROWS_AS(announceAddress(ctr.netns(), "eth0", "fd00::1"), Error);
}
