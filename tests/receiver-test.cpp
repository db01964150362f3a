// Issue 9, the data receiver: real daemons in the lab, and strangers on the
// fabric (another lab host) that reach the target's receiver port, as any
// host can. The sender is held back for a moment with an nftables drop in
// the source host's netns, so the strangers are the receiver's first
// connections.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>

#include <algorithm>
#include <map>
#include <catch2/catch.hpp>
#include <cstring>
#include <optional>
#include <future>
#include <set>
#include <sstream>
#include <thread>

#include "common/files.h"
#include "common/subprocess.h"
#include "tests/support/harness.h"

using namespace migrate;
using namespace migrate::test;
using nlohmann::json;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

// The target's data address (scripts/cluster.sh: 198.19.0.(10+K)).
constexpr const char* kHost2Data = "198.19.0.12";
// The receiver's handshake bound (net/tls-stream.h kTlsHandshakeTimeout),
// and its wait for a sender (agent-daemon.cpp kDefaultAcceptTimeout).
constexpr auto kHandshakeBound = 5s;
constexpr auto kAcceptDeadline = 60s;

std::vector<json> entries(ClusterGuard& cluster, const std::string& name) {
  std::vector<json> out;
  for (auto& c : cluster.migrateJson({"ps"})) {
    if (c["name"] == name) out.push_back(c);
  }
  return out;
}

unsigned long lastCount(ClusterGuard& cluster, const std::string& name) {
  auto c = counts(cluster.migrate({"logs", name}));
  return c.empty() ? 0 : c.back();
}

// The counter goes on from where it was and was never started again.
void checkCounterContinues(ClusterGuard& cluster, const std::string& name) {
  auto at = lastCount(cluster, name);
  CHECK(waitUntil([&] { return lastCount(cluster, name) > at + 2; }, 10s));
  auto all = counts(cluster.migrate({"logs", name}));
  CHECK(std::count(all.begin(), all.end(), 1ul) == 1);
}

// TCP ports listening on `address` in `host`'s netns, each with its accept
// queue: connections the kernel completed that the listener has not taken
// (a listening socket's Recv-Q in ss).
std::map<uint16_t, unsigned long> listeners(const std::string& host, const std::string& address) {
  auto r = runCapture(SubprocessOptions::of({"nsenter", "--net=/run/netns/" + host, "--", "ss", "-Hltn"}));
  std::map<uint16_t, unsigned long> ports;
  std::istringstream lines(r.out);
  std::string line;
  while (std::getline(lines, line)) {
    std::istringstream fields(line);
    std::string state, recvQ, sendQ, local;
    fields >> state >> recvQ >> sendQ >> local;
    auto colon = local.rfind(':');
    if (colon != std::string::npos && local.substr(0, colon) == address) {
      ports[static_cast<uint16_t>(std::stoi(local.substr(colon + 1)))] = std::stoul(recvQ);
    }
  }
  return ports;
}

std::set<uint16_t> listeningPorts(const std::string& host, const std::string& address) {
  std::set<uint16_t> ports;
  for (auto& [port, queued] : listeners(host, address)) ports.insert(port);
  return ports;
}

// The receiver port a migration opened: one not in `before`.
std::optional<uint16_t> newPort(const std::set<uint16_t>& before, std::chrono::milliseconds timeout) {
  std::optional<uint16_t> found;
  waitUntil([&] {
    for (auto p : listeningPorts("host2", kHost2Data)) {
      if (!before.count(p)) found = p;
    }
    return found.has_value();
  }, timeout);
  return found;
}

// A TCP connection made from inside lab host `host`: a thread of ours
// enters its netns (setns affects the calling thread only), and the socket
// stays in that netns whatever thread uses it later.
Fd connectFrom(const std::string& host, const std::string& ip, uint16_t port) {
  return std::async(std::launch::async, [&]() -> Fd {
    Fd ns(::open(("/run/netns/" + host).c_str(), O_RDONLY | O_CLOEXEC));
    if (!ns || ::setns(ns.get(), CLONE_NEWNET) != 0) throw std::runtime_error("setns into " + host + " failed");
    Fd sock(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    ::inet_pton(AF_INET, ip.c_str(), &addr.sin_addr);
    if (!sock || ::connect(sock.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      throw std::runtime_error("connect from " + host + " to " + ip + ":" + std::to_string(port) + ": " +
                               std::strerror(errno));
    }
    return sock;
  }).get();
}

// True once the peer closed `sock` (EOF or reset, after whatever it said
// last), within `timeout`.
bool closedWithin(const Fd& sock, std::chrono::milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  for (;;) {
    auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now());
    pollfd p{sock.get(), POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(std::max<int64_t>(left.count(), 0))) <= 0) return false;
    char buffer[4096];
    ssize_t n = ::recv(sock.get(), buffer, sizeof buffer, MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno == ECONNRESET)) return true;
  }
}

// Drops `host`'s TCP traffic to `address` (its netns's output hook) until
// lifted: the source agent's connect to the receiver is held back while its
// SYNs are dropped, and gets through with the next retransmission.
class HoldTcp {
 public:
  HoldTcp(std::string host, const std::string& address) : host_(std::move(host)) {
    nft({"add", "table", "ip", kTable});
    nft({"add", "chain", "ip", kTable, "out", "{ type filter hook output priority 0 ; }"});
    nft({"add", "rule", "ip", kTable, "out", "ip", "daddr", address, "meta", "l4proto", "tcp", "drop"});
  }
  ~HoldTcp() { lift(); }
  void lift() {
    if (lifted_) return;
    lifted_ = true;
    runCapture(SubprocessOptions::of({"nsenter", "--net=/run/netns/" + host_, "--", "nft", "delete", "table", "ip",
                                      kTable}));
  }

 private:
  static constexpr const char* kTable = "migrate_receiver_test";
  void nft(const std::vector<std::string>& args) {
    std::vector<std::string> full = {"nsenter", "--net=/run/netns/" + host_, "--", "nft"};
    full.insert(full.end(), args.begin(), args.end());
    run(full);
  }
  std::string host_;
  bool lifted_ = false;
};

std::string startMigration(ClusterGuard& cluster, const std::string& name, const std::string& to) {
  return cluster.migrateJson({name, "--to", to, "--tcp-established", "--detach"}).at("id").get<std::string>();
}

json waitFinal(ClusterGuard& cluster, const std::string& id, std::chrono::seconds timeout) {
  json status;
  waitUntil([&] {
    auto r = cluster.tryMigrate({"status", id, "--output", "json"});
    if (r.status != 0) return false;
    status = json::parse(r.out);
    std::string s = status["state"];
    return s == "succeeded" || s == "rolled-back" || s == "failed" || s == "cancelled";
  }, timeout);
  return status;
}

std::string host2Log() { return readFileIfExists("/run/migrate-lab/host2/agent.log").value_or(""); }

}  // namespace

TEST_CASE("receiver: strangers connecting first to the target's port neither stop nor stall the migration") {
  REQUIRE_PRIVILEGES();
  ClusterGuard cluster(3);
  cluster.migrate({"run", "--on", "host1", "--name", "web", "test", "sh", "-c",
                   "/usr/local/bin/echo-server 7777 & exec /usr/local/bin/counter"});
  std::string ip = entries(cluster, "web").at(0)["ip"];
  REQUIRE(waitUntil([&] { return lastCount(cluster, "web") >= 3; }, 10s));
  TcpClient tcp(ip, 7777);
  REQUIRE(waitUntil([&] { return cluster.migrate({"logs", "web"}).find("client connected") != std::string::npos; }, 10s));

  auto before = listeningPorts("host2", kHost2Data);
  HoldTcp hold("host1", kHost2Data);
  auto id = startMigration(cluster, "web", "host2");
  auto port = newPort(before, 15s);
  REQUIRE(port);
  // From host3, any host on the fabric: one says nothing, one talks garbage.
  auto connected = Clock::now();
  Fd silent = connectFrom("host3", kHost2Data, *port);
  Fd garbage = connectFrom("host3", kHost2Data, *port);
  std::string junk = "GET / HTTP/1.1\r\nHost: host2\r\n\r\n" + std::string(4096, '\x16');
  REQUIRE(::send(garbage.get(), junk.data(), junk.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(junk.size()));
  // The receiver took both (its accept queue is empty) before the sender comes.
  REQUIRE(waitUntil([&] { return listeners("host2", kHost2Data)[*port] == 0; }, 5s));
  // Now the sender: its next SYN retransmission gets through.
  hold.lift();

  CHECK(closedWithin(garbage, 2s));
  CHECK(closedWithin(silent, kHandshakeBound + 2s));
  CHECK(Clock::now() - connected < kHandshakeBound + 3s);

  auto status = waitFinal(cluster, id, 120s);
  INFO(status.dump(2));
  INFO(host2Log());
  REQUIRE(status["state"] == "succeeded");
  auto after = entries(cluster, "web");
  REQUIRE(after.size() == 1);
  CHECK(after[0]["host"] == "host2");
  CHECK(after[0]["state"] == "running");
  checkCounterContinues(cluster, "web");
  auto summary = tcp.stop();
  INFO(summary.dump());
  CHECK(summary["exitStatus"] == 0);
  CHECK(summary["verified"] == summary["sent"]);
  // The receiver told them apart and said so; and it is gone.
  CHECK(host2Log().find(": dropped 198.19.0.13:") != std::string::npos);
  CHECK(listeningPorts("host2", kHost2Data).count(*port) == 0);
}

TEST_CASE("receiver: a migration whose sender never comes leaves no receiver, and the next one succeeds") {
  REQUIRE_PRIVILEGES();
  ClusterGuard cluster(2);
  cluster.migrate({"run", "--on", "host1", "--name", "web", "test", "/usr/local/bin/counter"});
  REQUIRE(waitUntil([&] { return lastCount(cluster, "web") >= 3; }, 10s));

  auto before = listeningPorts("host2", kHost2Data);
  std::optional<uint16_t> port;
  {
    // The source cannot reach the target: its connect times out and the
    // coordinator rolls back before anything froze.
    HoldTcp hold("host1", kHost2Data);
    auto id = startMigration(cluster, "web", "host2");
    port = newPort(before, 15s);
    REQUIRE(port);
    auto status = waitFinal(cluster, id, 60s);
    INFO(status.dump(2));
    CHECK(status["state"] == "rolled-back");
    CHECK(status["errorKind"] == "disconnected");
  }
  CHECK(waitUntil([&] { return listeningPorts("host2", kHost2Data).count(*port) == 0; }, 5s));
  auto web = entries(cluster, "web");
  REQUIRE(web.size() == 1);
  CHECK(web[0]["host"] == "host1");
  checkCounterContinues(cluster, "web");

  auto again = cluster.migrateJson({"web", "--to", "host2", "--tcp-established"});
  INFO(again.dump(2));
  CHECK(again["state"] == "succeeded");
  CHECK(entries(cluster, "web").at(0)["host"] == "host2");
  checkCounterContinues(cluster, "web");
}

TEST_CASE("receiver: with nobody to abort it, a receiver whose sender never came ends at its deadline") {
  REQUIRE_PRIVILEGES();
  ClusterGuard cluster(2);
  cluster.migrate({"run", "--on", "host1", "--name", "web", "test", "/usr/local/bin/counter"});
  REQUIRE(waitUntil([&] { return lastCount(cluster, "web") >= 3; }, 10s));

  auto before = listeningPorts("host2", kHost2Data);
  HoldTcp hold("host1", kHost2Data);
  auto id = startMigration(cluster, "web", "host2");
  auto port = newPort(before, 15s);
  REQUIRE(port);
  auto prepared = Clock::now();
  // The coordinator goes away right after prepareReceive: no abortReceive
  // will come, and the sender never gets through.
  int coordinator = cluster.coordinatorPid();
  ::kill(coordinator, SIGKILL);
  REQUIRE(waitUntil([&] { return !processAlive(coordinator); }, 10s));
  // A stranger (from the fabric: host1 is held) does not keep it alive either.
  Fd stranger = connectFrom("fabric", kHost2Data, *port);

  CHECK(closedWithin(stranger, kHandshakeBound + 2s));
  bool gone = waitUntil([&] { return listeningPorts("host2", kHost2Data).count(*port) == 0; },
                        kAcceptDeadline + 20s);
  INFO(host2Log());
  REQUIRE(gone);
  CHECK(Clock::now() - prepared > kAcceptDeadline - 5s);
  CHECK(host2Log().find("no sender authenticated on 198.19.0.12:" + std::to_string(*port)) != std::string::npos);

  // The coordinator back, it rolls the migration back; the container never
  // left host1, and it migrates now.
  hold.lift();
  cluster.startCoordinator();
  auto status = waitFinal(cluster, id, 120s);
  INFO(status.dump(2));
  CHECK(status["state"] == "rolled-back");
  CHECK(status["errorKind"] == "disconnected");
  CHECK(entries(cluster, "web").at(0)["host"] == "host1");
  auto again = cluster.migrateJson({"web", "--to", "host2", "--tcp-established"});
  INFO(again.dump(2));
  CHECK(again["state"] == "succeeded");
  checkCounterContinues(cluster, "web");
}

TEST_CASE("receiver: an agent stopping while an image receive waits for its sender exits at once") {
  REQUIRE_PRIVILEGES();
  ClusterGuard cluster(2);
  // An image only host1 has: the migration sends it to host2 first.
  TempDir dir("/var/tmp", "migrate-receiver-test");
  auto tar = (dir.path() / "lone.tar").string();
  run({std::string(MIGRATE_SOURCE_DIR) + "/tests/support/make-test-image.sh", tar, binary("counter").string()});
  run({"nsenter", "--net=/run/netns/host1", "--", binary("migrate-agent").string(), "--state",
       ClusterGuard::agentState("host1").string(), "--host", "host1", "image", "import", tar, "lone"});
  cluster.migrate({"run", "--on", "host1", "--name", "web", "lone", "/usr/local/bin/counter"});
  REQUIRE(waitUntil([&] { return lastCount(cluster, "web") >= 2; }, 10s));

  auto before = listeningPorts("host2", kHost2Data);
  HoldTcp hold("host1", kHost2Data);
  auto id = startMigration(cluster, "web", "host2");
  auto port = newPort(before, 15s);
  REQUIRE(port);
  REQUIRE(cluster.migrateJson({"status", id})["phase"] == "image");

  int agent = cluster.agentPid("host2");
  auto stopping = Clock::now();
  ::kill(agent, SIGTERM);
  bool exited = waitUntil([&] { return !processAlive(agent); }, 20s);
  auto took = Clock::now() - stopping;
  INFO(host2Log());
  CHECK(exited);
  // Not the image accept's 60 s: its wait polls the agent's stop.
  CHECK(took < 5s);

  hold.lift();
  cluster.startAgent("host2");
  auto status = waitFinal(cluster, id, 120s);
  INFO(status.dump(2));
  CHECK(status["state"] != "succeeded");
  CHECK(entries(cluster, "web").at(0)["host"] == "host1");
  checkCounterContinues(cluster, "web");
}
