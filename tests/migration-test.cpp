// Issue 4 end to end: a coordinator and two agent daemons in the lab, driven
// through the `migrate` CLI as a user would; real runc, CRIU, CNI, ZeroMQ
// CURVE and TLS. Checks what a user would check.
#include <signal.h>
#include <sys/mount.h>

#include <catch2/catch.hpp>
#include <fstream>
#include <map>
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


namespace {

// Every container the coordinator lists under `name` (one per host holding it).
std::vector<json> entries(ClusterGuard& cluster, const std::string& name) {
  std::vector<json> out;
  for (auto& c : cluster.migrateJson({"ps"})) {
    if (c["name"] == name) out.push_back(c);
  }
  return out;
}

// Processes running `program` inside containers of this lab's hosts (their
// cgroups are /migrate/hostK/...), whatever else runs on the machine.
int countProcesses(const std::string& program) {
  int n = 0;
  for (auto& p : fs::directory_iterator("/proc")) {
    auto name = p.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    try {
      auto cmdline = readFileIfExists(p.path() / "cmdline").value_or("");
      auto cgroup = readFileIfExists(p.path() / "cgroup").value_or("");
      if (cmdline.find(program) != std::string::npos && cgroup.find(":/migrate/host") != std::string::npos) ++n;
    } catch (const std::exception&) {
      // The process went away while we looked.
    }
  }
  return n;
}

std::string listDir(const fs::path& dir) {
  std::string out;
  for (auto& e : fs::directory_iterator(dir)) out += e.path().filename().string() + " ";
  return out;
}

unsigned long lastCount(ClusterGuard& cluster, const std::string& name) {
  auto c = counts(cluster.migrate({"logs", name}));
  return c.empty() ? 0 : c.back();
}

// After a rolled-back migration of the counter `web` from host1 to host2:
// it runs on host1, once, still counting, and host2 has nothing.
void checkCounterRunsOnHost1Only(ClusterGuard& cluster) {
  auto web = entries(cluster, "web");
  REQUIRE(web.size() == 1);
  CHECK(web[0]["host"] == "host1");
  CHECK(web[0]["state"] == "running");
  CHECK(countProcesses("/usr/local/bin/counter") == 1);
  CHECK(cluster.agentJson("host2", {"ps"}).empty());
  auto at = lastCount(cluster, "web");
  CHECK(waitUntil([&] { return lastCount(cluster, "web") > at + 2; }, 10s));
}

// What a migration must not leak on a host: agent fds, mounts, netns files,
// cgroups, container processes.
struct HostFootprint {
  size_t fds, mounts, netns, cgroups;
};

HostFootprint footprint(ClusterGuard& cluster, const std::string& host) {
  HostFootprint f{};
  // The fewest fds seen over a second: a leak stays, while the pipes of a
  // `runc state` behind a heartbeat or a listing come and go.
  f.fds = SIZE_MAX;
  auto fdDir = "/proc/" + std::to_string(cluster.agentPid(host)) + "/fd";
  for (int i = 0; i < 10; ++i) {
    f.fds = std::min(f.fds, static_cast<size_t>(std::distance(fs::directory_iterator(fdDir), fs::directory_iterator())));
    std::this_thread::sleep_for(100ms);
  }
  std::istringstream mounts(readFile("/proc/self/mountinfo"));
  std::string line, state = ClusterGuard::agentState(host).string() + "/";
  while (std::getline(mounts, line)) f.mounts += line.find(state) != std::string::npos;
  auto netns = ClusterGuard::agentState(host) / "netns";
  if (fs::exists(netns)) f.netns = static_cast<size_t>(std::distance(fs::directory_iterator(netns), fs::directory_iterator()));
  fs::path cg = "/sys/fs/cgroup/memory/migrate/" + host;
  if (fs::exists(cg)) {
    for (auto& e : fs::directory_iterator(cg)) f.cgroups += e.is_directory();
  }
  return f;
}

std::string footprintText(const HostFootprint& f) {
  return "fds " + std::to_string(f.fds) + ", mounts " + std::to_string(f.mounts) + ", netns " +
         std::to_string(f.netns) + ", cgroups " + std::to_string(f.cgroups);
}

// Starts a migration without waiting (--detach) and returns its id.
std::string startMigration(ClusterGuard& cluster, const std::string& name, const std::string& to) {
  auto r = cluster.migrateJson({name, "--to", to, "--tcp-established", "--detach"});
  return r.at("id").get<std::string>();
}

json waitFinal(ClusterGuard& cluster, const std::string& id, std::chrono::seconds timeout) {
  json status;
  waitUntil([&] {
    status = cluster.migrateJson({"status", id});
    std::string s = status["state"];
    return s == "succeeded" || s == "rolled-back" || s == "failed" || s == "cancelled" || s == "abandoned";
  }, timeout);
  return status;
}

// Rounds of memhog's check of its whole buffer so far.
size_t verifiedRounds(ClusterGuard& cluster, const std::string& name) {
  return occurrences(cluster.migrate({"logs", name}), "verified ");
}

// memhog re-checks every byte `rounds` more times, and was not started again.
void checkMemoryVerifies(ClusterGuard& cluster, const std::string& name, size_t rounds, std::chrono::seconds timeout) {
  auto at = verifiedRounds(cluster, name);
  CHECK(waitUntil([&] { return verifiedRounds(cluster, name) >= at + rounds; }, timeout));
  auto log = cluster.migrate({"logs", name});
  CHECK(log.find("CORRUPT") == std::string::npos);
  CHECK(occurrences(log, "ready ") == 1);
}

// One TCP connection from the lab's client netns to the container's echo
// server (port 7777), returned once the server saw it.
TcpClient connectEchoClient(ClusterGuard& cluster, const std::string& name, const std::string& ip) {
  TcpClient tcp(ip, 7777);
  REQUIRE(waitUntil([&] { return cluster.migrate({"logs", name}).find("client connected") != std::string::npos; }, 10s));
  return tcp;
}

// That connection went on: it carries kEchoesAfter more echoes (past any
// retransmission backoff of the move), every message sent was echoed intact,
// over the one connection.
constexpr unsigned long kEchoesAfter = 50;
void checkConnectionKept(ClusterGuard& cluster, const std::string& name, TcpClient& tcp) {
  auto at = tcp.verified();
  CHECK(waitUntil([&] { return tcp.verified() >= at + kEchoesAfter; }, 30s));
  auto summary = tcp.stop();
  INFO(summary.dump());
  CHECK(summary["exitStatus"] == 0);
  CHECK(summary["error"].is_null());
  CHECK(summary["verified"] == summary["sent"]);
  CHECK(occurrences(cluster.migrate({"logs", name}), "client connected") == 1);
}

}  // namespace

TEST_CASE("migrate web --to host2: counter, TCP connection, IP, MAC and files all carry over") {
  REQUIRE_PRIVILEGES();
  ClusterGuard cluster(2);
  cluster.migrate({"run", "--on", "host1", "--name", "web", "test", "sh", "-c",
                   "echo written-on-host1 > /root/note; /usr/local/bin/echo-server 7777 & "
                   "exec /usr/local/bin/counter"});
  auto before = entries(cluster, "web");
  REQUIRE(before.size() == 1);
  std::string ip = before[0]["ip"], mac = before[0]["mac"];
  REQUIRE(waitUntil([&] { return lastCount(cluster, "web") >= 5; }, 10s));

  auto tcp = connectEchoClient(cluster, "web", ip);

  auto result = cluster.migrateJson({"web", "--to", "host2", "--tcp-established"});
  INFO(result.dump(2));
  CHECK(result["state"] == "succeeded");
  CHECK(result["stats"]["downtimeMs"].get<double>() > 0);
  CHECK(result["stats"]["bytesWire"].get<uint64_t>() > 0);
  CHECK(result["stats"]["sha256"] == result["stats"]["sha256Target"]);
  // Where the frozen time went, in CRIU's own figures from both sides.
  CHECK(result["stats"]["criu"]["frozenMs"].get<double>() > 0);
  CHECK(result["stats"]["criu"]["pagesWritten"].get<uint64_t>() > 0);
  CHECK(result["stats"]["agentPhases"]["target"]["criu-restore"].get<double>() > 0);

  auto after = entries(cluster, "web");
  REQUIRE(after.size() == 1);
  CHECK(after[0]["host"] == "host2");
  CHECK(after[0]["state"] == "running");
  CHECK(after[0]["ip"] == ip);
  CHECK(after[0]["mac"] == mac);
  // Nothing of it is left on host1: no container, no checkpoint, no process.
  CHECK(cluster.agentJson("host1", {"ps"}).empty());
  CHECK(std::distance(fs::directory_iterator(ClusterGuard::agentState("host1") / "containers"),
                      fs::directory_iterator()) == 0);
  CHECK(countProcesses("/usr/local/bin/counter") == 1);

  // The counter went on from where it was; the file is there.
  auto stoppedAt = lastCount(cluster, "web");
  CHECK(waitUntil([&] { return lastCount(cluster, "web") > stoppedAt + 3; }, 10s));
  auto all = counts(cluster.migrate({"logs", "web"}));
  CHECK(std::count(all.begin(), all.end(), 1ul) == 1);
  auto host2Web = cluster.agentJson("host2", {"inspect", "web"});
  CHECK(readFile(host2Web["dir"].get<std::string>() + "/rootfs/root/note") == "written-on-host1\n");

  // The same TCP connection went on: every message echoed, none lost.
  checkConnectionKept(cluster, "web", tcp);
}

TEST_CASE("migrating back and forth 5 times leaks nothing on either host") {
  REQUIRE_PRIVILEGES();
  ClusterGuard cluster(2);
  cluster.migrate({"run", "--on", "host1", "--name", "ping", "test", "/usr/local/bin/echo-server", "7777"});
  // A first round trip warms up whatever is made once (image copies, caches).
  cluster.migrate({"ping", "--to", "host2"});
  cluster.migrate({"ping", "--to", "host1"});
  auto before1 = footprint(cluster, "host1"), before2 = footprint(cluster, "host2");
  for (int i = 0; i < 5; ++i) {
    INFO("round trip " << i);
    auto there = cluster.migrateJson({"ping", "--to", "host2"});
    REQUIRE(there["state"] == "succeeded");
    auto back = cluster.migrateJson({"ping", "--to", "host1"});
    REQUIRE(back["state"] == "succeeded");
  }
  auto after1 = footprint(cluster, "host1"), after2 = footprint(cluster, "host2");
  INFO("host1 before: " << footprintText(before1) << "; after: " << footprintText(after1));
  INFO("host2 before: " << footprintText(before2) << "; after: " << footprintText(after2));
  // A leak grows; a transient fd when we counted before may make "before"
  // the larger.
  for (auto [before, after] : {std::pair{before1, after1}, std::pair{before2, after2}}) {
    CHECK(after.fds <= before.fds);
    CHECK(after.mounts == before.mounts);
    CHECK(after.netns == before.netns);
    CHECK(after.cgroups == before.cgroups);
  }
  CHECK(countProcesses("/usr/local/bin/echo-server") == 1);
  CHECK(entries(cluster, "ping").size() == 1);
  CHECK(cluster.migrateJson({"history"}).size() == 12);
}

TEST_CASE("target agent killed mid-stream: the migration fails clearly and the container runs on host1, once") {
  REQUIRE_PRIVILEGES();
  ClusterGuard cluster(2);
  // Enough incompressible memory that the stream takes a while.
  cluster.migrate({"run", "--on", "host1", "--name", "big", "test", "/usr/local/bin/memhog", "768", "random"});
  REQUIRE(waitUntil([&] { return cluster.migrate({"logs", "big"}).find("verified") != std::string::npos; }, 60s));
  auto id = startMigration(cluster, "big", "host2");
  REQUIRE(waitUntil([&] {
    auto s = cluster.migrateJson({"status", id});
    return s["phase"] == "stream" && s["bytesDone"].get<uint64_t>() > 0;
  }, 60s));
  ::kill(cluster.agentPid("host2"), SIGKILL);

  // The source runs it again at once, from its own checkpoint; what the dead
  // target received is cleaned up when it comes back, so until then the
  // migration stays `rolling-back`.
  REQUIRE(waitUntil([&] {
    auto s = cluster.migrateJson({"status", id});
    return s["state"] == "rolled-back" ||
           (s["state"] == "rolling-back" && s["stats"].value("targetCleanupPending", false));
  }, 120s));
  REQUIRE(waitUntil([&] {
    auto big = entries(cluster, "big");
    return big.size() == 1 && big[0]["host"] == "host1" && big[0]["state"] == "running";
  }, 60s));
  auto status = cluster.migrateJson({"status", id});
  INFO(status.dump(2));
  CHECK((status["state"] == "rolling-back" || status["state"] == "rolled-back"));
  CHECK_FALSE(status["error"].get<std::string>().empty());
  CHECK(status["errorKind"] == "disconnected");
  CHECK(countProcesses("/usr/local/bin/memhog") == 1);
  // Its memory came back intact from host1's own checkpoint.
  CHECK(cluster.migrate({"logs", "big"}).find("CORRUPT") == std::string::npos);

  // The restarted target agent cleans up what the killed one left, and the
  // coordinator finishes the rollback.
  cluster.startAgent("host2");
  auto final = waitFinal(cluster, id, 60s);
  INFO(final.dump(2));
  CHECK(final["state"] == "rolled-back");
  CHECK(final["errorKind"] == "disconnected");
  CHECK(cluster.agentJson("host2", {"ps"}).empty());
  auto containers = ClusterGuard::agentState("host2") / "containers";
  CHECK(waitUntil([&] { return fs::is_empty(containers); }, 10s));
  INFO("host2 containers dir: " << listDir(containers));
  CHECK(fs::is_empty(containers));
  auto big = entries(cluster, "big");
  REQUIRE(big.size() == 1);
  CHECK(big[0]["host"] == "host1");
  CHECK(countProcesses("/usr/local/bin/memhog") == 1);
}

TEST_CASE("a CRIU restore failure on the target rolls back: the container runs on host1 again") {
  REQUIRE_PRIVILEGES();
  ClusterGuard cluster(2);
  cluster.migrate({"run", "--on", "host1", "--name", "web", "test", "/usr/local/bin/counter"});
  REQUIRE(waitUntil([&] { return lastCount(cluster, "web") >= 3; }, 10s));
  // A CRIU configuration host2's CRIU refuses: its restores fail in CRIU itself.
  auto criuConf = ClusterGuard::agentState("host2") / "criu.conf";
  auto original = readFile(criuConf);
  writeFileAtomic(criuConf, original + "no-such-criu-option\n");

  auto r = cluster.tryMigrate({"web", "--to", "host2", "--output", "json"});
  CHECK(r.status != 0);
  auto result = json::parse(r.out);
  INFO(result.dump(2));
  CHECK(result["state"] == "rolled-back");
  CHECK(result["errorKind"] == "failed");
  CHECK(result["error"].get<std::string>().find("restore") != std::string::npos);
  checkCounterRunsOnHost1Only(cluster);

  // Fixed, the same migration goes through.
  writeFileAtomic(criuConf, original);
  CHECK(cluster.migrateJson({"web", "--to", "host2"})["state"] == "succeeded");
}

TEST_CASE("a full disk on the target fails the migration cleanly") {
  REQUIRE_PRIVILEGES();
  ClusterGuard cluster(2);
  // 16 MiB written into the container's writable layer: that goes to disk on
  // the target (CRIU images go to memory).
  cluster.migrate({"run", "--on", "host1", "--name", "mem", "test", "sh", "-c",
                   "dd if=/dev/urandom of=/root/big bs=1M count=16 2>/dev/null; exec /usr/local/bin/memhog 16 random"});
  REQUIRE(waitUntil([&] { return cluster.migrate({"logs", "mem"}).find("verified") != std::string::npos; }, 30s));
  // host2's container storage is a 4 MiB filesystem: the writable layer cannot land.
  auto containers = ClusterGuard::agentState("host2") / "containers";
  REQUIRE(::mount("tmpfs", containers.c_str(), "tmpfs", 0, "size=4m") == 0);
  struct Unmount {
    ClusterGuard& cluster;
    fs::path p;
    ~Unmount() {
      // Should the container have landed there after all, remove it before
      // its files vanish with the mount.
      cluster.tryMigrate({"rm", "--force", "mem"});
      ::umount2(p.c_str(), MNT_DETACH);
    }
  } unmount{cluster, containers};

  auto r = cluster.tryMigrate({"mem", "--to", "host2", "--output", "json"});
  CHECK(r.status != 0);
  auto result = json::parse(r.out);
  INFO(result.dump(2));
  CHECK(result["state"] == "rolled-back");
  // Refused at the manifest: its rootfsDiffBytes do not fit host2's free disk.
  CHECK(result["errorKind"] == "overloaded");
  CHECK_THAT(result["error"].get<std::string>(),
             Catch::Contains("bundle declares rootfsDiffBytes = ") && Catch::Contains("bytes free"));
  CHECK(result["error"].get<std::string>().find("host2") != std::string::npos);
  auto mem = entries(cluster, "mem");
  REQUIRE(mem.size() == 1);
  CHECK(mem[0]["host"] == "host1");
  CHECK(mem[0]["state"] == "running");
  CHECK(countProcesses("/usr/local/bin/memhog") == 1);
  CHECK(fs::is_empty(containers));
}

TEST_CASE("a coordinator killed mid-migration resumes or rolls back on restart: the container runs exactly once") {
  REQUIRE_PRIVILEGES();
  ClusterGuard cluster(2);
  cluster.migrate({"run", "--on", "host1", "--name", "big", "test", "/usr/local/bin/memhog", "512", "random"});
  REQUIRE(waitUntil([&] { return cluster.migrate({"logs", "big"}).find("verified") != std::string::npos; }, 60s));
  auto id = startMigration(cluster, "big", "host2");
  REQUIRE(waitUntil([&] {
    auto s = cluster.migrateJson({"status", id});
    return s["phase"] == "stream" || s["phase"] == "restore";
  }, 60s));
  int pid = cluster.coordinatorPid();
  ::kill(pid, SIGKILL);
  REQUIRE(waitUntil([&] { return !processAlive(pid); }, 10s));
  cluster.startCoordinator();

  json status;
  REQUIRE(waitUntil([&] {
    auto r = cluster.tryMigrate({"status", id, "--output", "json"});
    if (r.status != 0) return false;
    status = json::parse(r.out);
    std::string s = status["state"];
    return s == "succeeded" || s == "rolled-back";
  }, 120s));
  INFO(status.dump(2));
  // Either outcome keeps the invariant: one running copy, on the host the
  // coordinator says owns it.
  bool single = waitUntil([&] {
    auto big = entries(cluster, "big");
    return big.size() == 1 && big[0]["state"] == "running";
  }, 30s);
  INFO("ps: " << cluster.migrateJson({"ps"}).dump(2));
  INFO("host1: " << cluster.agentJson("host1", {"ps"}).dump(2));
  INFO("host2: " << cluster.agentJson("host2", {"ps"}).dump(2));
  REQUIRE(single);
  auto big = entries(cluster, "big");
  CHECK(big[0]["host"] == (status["state"] == "succeeded" ? "host2" : "host1"));
  CHECK(countProcesses("/usr/local/bin/memhog") == 1);
  CHECK(cluster.migrate({"logs", "big"}).find("CORRUPT") == std::string::npos);
}

TEST_CASE("an agent with an unknown CURVE key is refused") {
  REQUIRE_PRIVILEGES();
  ClusterGuard cluster(2);
  TempDir keys("/var/tmp", "migrate-rogue");
  TempDir state("/var/tmp", "migrate-rogue-state");
  run({binary("migrate-agent").string(), "keygen", "--dir", keys.path().string(), "--name", "host2"});
  // It claims to be host2, from host2's own address, with a key nobody allowed.
  SubprocessOptions rogue = SubprocessOptions::of(
      {"nsenter", "--net=/run/netns/host2", "--", binary("migrate-agent").string(), "--state", state.path().string(),
       "--host", "host2", "daemon", "--coordinator", "tcp://198.19.0.1:7700", "--coordinator-key",
       "/var/lib/migrate-lab/keys/coordinator.pub", "--key-dir", keys.path().string(), "--data-address",
       "198.19.0.12"});
  Subprocess agent(rogue);
  CHECK(waitUntil([] {
    return readFile("/run/migrate-lab/coordinator.log").find("refused") != std::string::npos;
  }, 10s));
  // The real host2 is unaffected and the impostor never shows up.
  auto hosts = cluster.migrateJson({"hosts"});
  CHECK(hosts.size() == 2);
  for (auto& h : hosts) CHECK(h["up"] == true);
  agent.kill(SIGTERM);
  agent.wait();
}

TEST_CASE("a migration whose bundle is signed by another key than the coordinator has for the source rolls back") {
  REQUIRE_PRIVILEGES();
  ClusterGuard cluster(2);
  cluster.migrate({"run", "--on", "host1", "--name", "web", "test", "/usr/local/bin/counter"});
  REQUIRE(waitUntil([&] { return lastCount(cluster, "web") >= 3; }, 10s));
  std::string host1Key = cluster.agentJson("host1", {"signing-key"})["publicKey"];
  std::string host2Key = cluster.agentJson("host2", {"signing-key"})["publicKey"];
  auto restartCoordinator = [&] {
    int pid = cluster.coordinatorPid();
    ::kill(pid, SIGTERM);
    REQUIRE(waitUntil([&] { return !processAlive(pid); }, 10s));
    cluster.startCoordinator();
    REQUIRE(waitUntil([&] {
      auto r = cluster.tryMigrate({"hosts", "--output", "json"});
      if (r.status != 0) return false;
      auto hosts = json::parse(r.out);
      return hosts.size() == 2 && hosts[0]["up"] == true && hosts[1]["up"] == true;
    }, 30s));
  };
  // The allow-list pins host2's key as host1's: the coordinator hands host2
  // a key that did not sign host1's bundle.
  fs::path allowList = "/var/lib/migrate-lab/keys/agents";
  auto original = readFile(allowList);
  std::string pinned;
  std::istringstream lines(original);
  for (std::string line; std::getline(lines, line);) {
    pinned += line + (line.rfind("host1 ", 0) == 0 ? " " + host2Key : "") + "\n";
  }
  writeFileAtomic(allowList, pinned);
  restartCoordinator();
  auto hosts = cluster.migrateJson({"hosts"});
  for (auto& h : hosts) {
    if (h["name"] == "host1") CHECK(h["signingKey"] == host2Key);
  }

  auto r = cluster.tryMigrate({"web", "--to", "host2", "--output", "json"});
  CHECK(r.status != 0);
  auto result = json::parse(r.out);
  INFO(result.dump(2));
  CHECK(result["state"] == "rolled-back");
  CHECK(result["errorKind"] == "invalid-input");
  std::string error = result["error"];
  CHECK(error.find("signature") != std::string::npos);
  CHECK(error.find(host1Key) != std::string::npos);  // who did sign
  checkCounterRunsOnHost1Only(cluster);

  // With the allow-list right again, the same migration goes through.
  writeFileAtomic(allowList, original);
  restartCoordinator();
  CHECK(cluster.migrateJson({"web", "--to", "host2"})["state"] == "succeeded");
  CHECK(countProcesses("/usr/local/bin/counter") == 1);
}

TEST_CASE("the CLI's JSON output parses and agrees with its human output") {
  REQUIRE_PRIVILEGES();
  ClusterGuard cluster(2);
  cluster.migrate({"run", "--on", "host2", "--name", "c1", "test", "/usr/local/bin/counter"});
  auto human = cluster.migrate({"ps"});
  auto machine = cluster.migrateJson({"ps"});
  REQUIRE(machine.size() == 1);
  for (auto key : {"name", "host", "state", "ip"}) {
    CHECK(human.find(machine[0][key].get<std::string>()) != std::string::npos);
  }
  auto hostsHuman = cluster.migrate({"hosts"});
  for (auto& h : cluster.migrateJson({"hosts"})) CHECK(hostsHuman.find(h["name"].get<std::string>()) != std::string::npos);

  auto moved = cluster.migrate({"c1", "--to", "host1"});
  auto id = cluster.migrateJson({"history", "--limit", "1"}).at(0);
  CHECK(moved.find(id["id"].get<std::string>()) != std::string::npos);
  CHECK(moved.find("downtime") != std::string::npos);
  auto status = cluster.migrateJson({"status", id["id"]});
  CHECK(status["state"] == "succeeded");
  CHECK(cluster.migrate({"status", id["id"]}).find("succeeded") != std::string::npos);
  CHECK(cluster.migrateJson({"logs", "c1"})["logs"].get<std::string>().find("count") != std::string::npos);
}

TEST_CASE("evacuating a host moves every container off it, keeping their addresses (stop-and-copy and post-copy)") {
  REQUIRE_PRIVILEGES();
  bool postCopy = GENERATE(false, true);
  INFO("postcopy: " << postCopy);
  ClusterGuard cluster(2);
  cluster.migrate({"run", "--on", "host1", "--name", "a", "test", "/usr/local/bin/counter"});
  cluster.migrate({"run", "--on", "host1", "--name", "b", "test", "/usr/local/bin/echo-server", "7777"});
  std::map<std::string, std::string> ips;
  for (auto& c : cluster.migrateJson({"ps"})) ips[c["name"]] = c["ip"];
  REQUIRE(ips.size() == 2);

  std::vector<std::string> evacuate = {"evacuate", "host1", "--to", "host2"};
  if (postCopy) evacuate.push_back("--postcopy");
  auto started = cluster.migrateJson(evacuate);
  INFO(started.dump(2));
  REQUIRE(started["migrations"].size() == 2);
  for (auto& id : started["migrations"]) {
    auto final = waitFinal(cluster, id.get<std::string>(), 60s);
    CHECK(final["state"] == "succeeded");
    // Post-copy moves the memory through the page channel, after the restore.
    CHECK(final["stats"].contains("bytesPages") == postCopy);
  }
  auto ps = cluster.migrateJson({"ps"});
  REQUIRE(ps.size() == 2);
  for (auto& c : ps) {
    CHECK(c["host"] == "host2");
    CHECK(c["state"] == "running");
    CHECK(c["ip"] == ips[c["name"]]);
  }
  CHECK(cluster.agentJson("host1", {"ps"}).empty());
}

TEST_CASE("post-copy: the container runs on host2 before its memory arrived, and memory, TCP, IP and MAC carry over") {
  REQUIRE_PRIVILEGES();
  ClusterGuard cluster(2);
  cluster.migrate({"run", "--on", "host1", "--name", "hog", "test", "sh", "-c",
                   "/usr/local/bin/echo-server 7777 & exec /usr/local/bin/memhog 96 random"});
  auto before = entries(cluster, "hog");
  REQUIRE(before.size() == 1);
  std::string ip = before[0]["ip"], mac = before[0]["mac"];
  REQUIRE(waitUntil([&] { return verifiedRounds(cluster, "hog") >= 2; }, 30s));
  auto tcp = connectEchoClient(cluster, "hog", ip);

  auto result = cluster.migrateJson({"hog", "--to", "host2", "--tcp-established", "--postcopy"});
  INFO(result.dump(2));
  CHECK(result["state"] == "succeeded");
  // The bundle carried no memory; the page channel carried all 96 MiB.
  CHECK(result["stats"]["bytesRaw"].get<uint64_t>() < (8u << 20));
  CHECK(result["stats"]["bytesPages"].get<uint64_t>() >= (96u << 20));
  CHECK(result["stats"]["downtimeMs"].get<double>() > 0);

  auto after = entries(cluster, "hog");
  REQUIRE(after.size() == 1);
  CHECK(after[0]["host"] == "host2");
  CHECK(after[0]["ip"] == ip);
  CHECK(after[0]["mac"] == mac);
  // Nothing left on host1: no container, no checkpoint, no frozen process.
  CHECK(cluster.agentJson("host1", {"ps"}).empty());
  CHECK(std::distance(fs::directory_iterator(ClusterGuard::agentState("host1") / "containers"),
                      fs::directory_iterator()) == 0);
  CHECK(countProcesses("/usr/local/bin/memhog") == 1);

  // Its whole memory is intact on host2, and it was not started again.
  checkMemoryVerifies(cluster, "hog", 2, 30s);
  // The checkpoint on host2 went once the last page was in.
  auto host2Hog = cluster.agentJson("host2", {"inspect", "hog"});
  CHECK(waitUntil([&] { return !fs::exists(host2Hog["dir"].get<std::string>() + "/checkpoint"); }, 10s));

  checkConnectionKept(cluster, "hog", tcp);
}

TEST_CASE("a downtime budget: a move estimated over it goes post-copy saying so, one within it stays stop-and-copy, "
          "and the next estimate uses the measured pair") {
  REQUIRE_PRIVILEGES();
  ClusterGuard cluster(2);
  cluster.migrate({"run", "--on", "host1", "--name", "hog", "test", "/usr/local/bin/memhog", "64", "random"});
  REQUIRE(waitUntil([&] { return verifiedRounds(cluster, "hog") >= 2; }, 30s));

  // 64 MiB cannot stop and copy in 1 ms: it goes post-copy.
  auto tight = cluster.migrateJson({"hog", "--to", "host2", "--max-downtime", "1ms"});
  INFO(tight.dump(2));
  CHECK(tight["state"] == "succeeded");
  json budget = tight["stats"]["downtimeBudget"];
  CHECK(budget["budgetMs"] == 1);
  CHECK(budget["mode"] == "post-copy");
  CHECK(budget["reason"].get<std::string>().find("estimated over the budget") != std::string::npos);
  CHECK(budget["memoryBytes"].get<uint64_t>() >= (64u << 20));
  CHECK(budget["stopAndCopyEstimateMs"].get<double>() > 1);
  CHECK(budget["basis"].get<std::string>().find("no stop-and-copy between host1 and host2 on record") !=
        std::string::npos);
  CHECK(budget["met"] == false);
  CHECK(tight["options"]["postCopy"] == true);  // journalled with the choice
  CHECK(tight["stats"]["bytesPages"].get<uint64_t>() >= (64u << 20));
  checkMemoryVerifies(cluster, "hog", 1, 30s);

  // Ten minutes is plenty: stop-and-copy, no page channel.
  auto loose = cluster.migrateJson({"hog", "--to", "host1", "--max-downtime", "10m"});
  INFO(loose.dump(2));
  CHECK(loose["state"] == "succeeded");
  CHECK(loose["stats"]["downtimeBudget"]["mode"] == "stop-and-copy");
  CHECK(loose["stats"]["downtimeBudget"]["met"] == true);
  CHECK(loose["options"]["postCopy"] == false);
  CHECK_FALSE(loose["stats"].contains("bytesPages"));
  checkMemoryVerifies(cluster, "hog", 1, 30s);

  // The next estimate takes its rate from that move; the human report says
  // what was chosen and why.
  std::string report = cluster.migrate({"hog", "--to", "host2", "--max-downtime", "1ms"});
  INFO(report);
  CHECK(report.find("moved post-copy: stop-and-copy estimated over the budget") != std::string::npos);
  CHECK(report.find("measured by " + loose["id"].get<std::string>()) != std::string::npos);
  checkMemoryVerifies(cluster, "hog", 1, 30s);

  // A budget that is not a duration is refused before anything starts.
  auto bad = cluster.tryMigrate({"hog", "--to", "host1", "--max-downtime", "soon"});
  CHECK(bad.status != 0);
  CHECK(bad.err.find("duration `soon`") != std::string::npos);
  CHECK(entries(cluster, "hog")[0]["host"] == "host2");

  // Over the budget, but post-copy cannot leave the source running: the
  // copy goes stop-and-copy, and says the budget will be missed.
  auto copy = cluster.migrateJson({"hog", "--to", "host1", "--max-downtime", "1ms", "--leave-running"});
  INFO(copy.dump(2));
  CHECK(copy["state"] == "succeeded");
  CHECK(copy["stats"]["downtimeBudget"]["mode"] == "stop-and-copy");
  CHECK(copy["stats"]["downtimeBudget"]["reason"].get<std::string>().find(
            "staying stop-and-copy (post-copy cannot leave the source running)") != std::string::npos);
  CHECK(copy["stats"]["downtimeBudget"]["met"] == false);
}

TEST_CASE("post-copy: a restore failure on host2 resumes the frozen container on host1, memory and TCP connection intact") {
  REQUIRE_PRIVILEGES();
  ClusterGuard cluster(2);
  cluster.migrate({"run", "--on", "host1", "--name", "hog", "test", "sh", "-c",
                   "/usr/local/bin/echo-server 7777 & exec /usr/local/bin/memhog 32 random"});
  std::string ip = entries(cluster, "hog").at(0)["ip"];
  REQUIRE(waitUntil([&] { return verifiedRounds(cluster, "hog") >= 2; }, 30s));
  auto tcp = connectEchoClient(cluster, "hog", ip);
  auto criuConf = ClusterGuard::agentState("host2") / "criu.conf";
  auto original = readFile(criuConf);
  writeFileAtomic(criuConf, original + "no-such-criu-option\n");

  auto r = cluster.tryMigrate({"hog", "--to", "host2", "--tcp-established", "--postcopy", "--output", "json"});
  CHECK(r.status != 0);
  auto result = json::parse(r.out);
  INFO(result.dump(2));
  CHECK(result["state"] == "rolled-back");
  CHECK(result["errorKind"] == "failed");
  auto hog = entries(cluster, "hog");
  REQUIRE(hog.size() == 1);
  CHECK(hog[0]["host"] == "host1");
  CHECK(hog[0]["state"] == "running");
  CHECK(hog[0]["ip"] == ip);
  CHECK(cluster.agentJson("host2", {"ps"}).empty());
  CHECK(countProcesses("/usr/local/bin/memhog") == 1);
  // The same process goes on (CRIU resumed it; not restored, not restarted)...
  checkMemoryVerifies(cluster, "hog", 2, 30s);
  // ...and so does its TCP connection: out of CRIU's lock and repair mode
  // before the processes ran again.
  checkConnectionKept(cluster, "hog", tcp);

  writeFileAtomic(criuConf, original);
  CHECK(cluster.migrateJson({"hog", "--to", "host2", "--postcopy"})["state"] == "succeeded");
}

TEST_CASE("post-copy: the source agent restarted while pages flow: the transfer completes and the move commits") {
  REQUIRE_PRIVILEGES();
  ClusterGuard cluster(2);
  cluster.migrate({"run", "--on", "host1", "--name", "big", "test", "/usr/local/bin/memhog", "768", "random"});
  REQUIRE(waitUntil([&] { return verifiedRounds(cluster, "big") >= 1; }, 60s));
  auto id = cluster.migrateJson({"big", "--to", "host2", "--tcp-established", "--postcopy", "--detach"}).at("id").get<std::string>();
  REQUIRE(waitUntil([&] { return cluster.migrateJson({"status", id})["phase"] == "pages"; }, 60s));
  // A graceful stop (SIGTERM) lets the pages finish before the agent exits.
  int pid = cluster.agentPid("host1");
  ::kill(pid, SIGTERM);
  REQUIRE(waitUntil([&] { return !processAlive(pid); }, 60s));
  cluster.startAgent("host1");

  auto final = waitFinal(cluster, id, 120s);
  INFO(final.dump(2));
  CHECK(final["state"] == "succeeded");
  auto big = entries(cluster, "big");
  REQUIRE(big.size() == 1);
  CHECK(big[0]["host"] == "host2");
  CHECK(cluster.agentJson("host1", {"ps"}).empty());
  CHECK(countProcesses("/usr/local/bin/memhog") == 1);
  checkMemoryVerifies(cluster, "big", 1, 60s);
}

TEST_CASE("cancel during a 1 GiB stream: the source runs again within seconds, its memory and TCP connection intact") {
  REQUIRE_PRIVILEGES();
  ClusterGuard cluster(2);
  cluster.migrate({"run", "--on", "host1", "--name", "big", "test", "sh", "-c",
                   "/usr/local/bin/echo-server 7777 & exec /usr/local/bin/memhog 1024 random"});
  std::string ip = entries(cluster, "big").at(0)["ip"];
  REQUIRE(waitUntil([&] { return verifiedRounds(cluster, "big") >= 1; }, 120s));
  auto tcp = connectEchoClient(cluster, "big", ip);
  std::string id = startMigration(cluster, "big", "host2");
  // Into the stream, before its end.
  json live;
  REQUIRE(waitUntil([&] {
    live = cluster.migrateJson({"status", id});
    return live["phase"] == "stream" && live["bytesDone"].get<uint64_t>() > 0;
  }, 60s));
  INFO("at the cancel: " << live.dump());
  REQUIRE(live["bytesDone"].get<uint64_t>() < live["bytesTotal"].get<uint64_t>());

  auto cancelled = std::chrono::steady_clock::now();
  cluster.migrateJson({"cancel", id});
  auto final = waitFinal(cluster, id, 60s);
  INFO(final.dump(2));
  // Rolled back (its source was frozen), because of the cancel.
  CHECK(final["state"] == "rolled-back");
  CHECK(final["errorKind"] == "cancelled");
  // The agent stopped its stream (the coordinator alone would have waited for it to end).
  CHECK(final["error"].get<std::string>().find("cancelled during the stream step") != std::string::npos);
  REQUIRE(waitUntil([&] {
    auto big = entries(cluster, "big");
    return big.size() == 1 && big[0]["host"] == "host1" && big[0]["state"] == "running";
  }, 60s));
  auto back = std::chrono::duration<double>(std::chrono::steady_clock::now() - cancelled).count();
  INFO("running on host1 again " << back << " s after the cancel");
  CHECK(back < 20);
  CHECK(cluster.agentJson("host2", {"ps"}).empty());
  CHECK(countProcesses("/usr/local/bin/memhog") == 1);
  // Brought back from its checkpoint with all of its memory, not started again.
  checkMemoryVerifies(cluster, "big", 1, 60s);
  checkConnectionKept(cluster, "big", tcp);
}

TEST_CASE("heartbeats keep flowing while four checkpoints run at once and a 1 GiB transfer goes on") {
  REQUIRE_PRIVILEGES();
  ClusterGuard cluster(2);
  cluster.migrate({"run", "--on", "host1", "--name", "big", "test", "/usr/local/bin/memhog", "1024", "random"});
  for (auto name : {"a", "b", "c"}) {
    cluster.migrate({"run", "--on", "host1", "--name", name, "test", "/usr/local/bin/memhog", "128", "random"});
  }
  for (auto name : {"big", "a", "b", "c"}) {
    REQUIRE(waitUntil([&] { return verifiedRounds(cluster, name) >= 1; }, 120s));
  }
  auto gaps = [&] {
    std::map<std::string, int64_t> out;
    for (auto& h : cluster.migrateJson({"hosts"})) out[h["name"]] = h["maxHeartbeatGapMs"].get<int64_t>();
    return out;
  };
  INFO("longest heartbeat gaps before: host1 " << gaps()["host1"] << " ms, host2 " << gaps()["host2"] << " ms");

  auto started = cluster.migrateJson({"evacuate", "host1", "--to", "host2", "--parallel", "4"});
  INFO(started.dump(2));
  REQUIRE(started["migrations"].size() == 4);
  for (auto& id : started["migrations"]) {
    auto final = waitFinal(cluster, id.get<std::string>(), 180s);
    INFO(final.dump(2));
    CHECK(final["state"] == "succeeded");
  }
  // The coordinator calls a host down after 3 missed heartbeats (the lab
  // sends one every 500 ms): neither came near it.
  auto after = gaps();
  INFO("longest heartbeat gaps: host1 " << after["host1"] << " ms, host2 " << after["host2"] << " ms");
  CHECK(after["host1"] < 1500);
  CHECK(after["host2"] < 1500);
  CHECK(cluster.migrateJson({"ps"}).size() == 4);
  CHECK(cluster.agentJson("host1", {"ps"}).empty());
}
