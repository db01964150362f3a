// Issue 10: containers in user namespaces, migrated for real in the lab
// (runc, CRIU, CNI, the coordinator and two agent daemons), with payloads
// that drop root: a counter, a memory checksum and a TCP echo connection as
// uid 1000, and PostgreSQL under pgbench.
#include <fcntl.h>
#include <sys/wait.h>

#include <catch2/catch.hpp>
#include <fstream>
#include <regex>
#include <thread>

#include "common/files.h"
#include "common/subprocess.h"
#include "tests/support/harness.h"

using namespace migrate;
using namespace migrate::test;
using nlohmann::json;
using namespace std::chrono_literals;

namespace {

json entry(ClusterGuard& cluster, const std::string& name) {
  json found;
  for (auto& c : cluster.migrateJson({"ps"})) {
    if (c["name"] == name) {
      REQUIRE(found.is_null());  // on one host only
      found = c;
    }
  }
  REQUIRE(found.is_object());
  return found;
}

unsigned long lastCount(ClusterGuard& cluster, const std::string& name) {
  auto c = counts(cluster.migrate({"logs", name}));
  return c.empty() ? 0 : c.back();
}

size_t verifiedRounds(ClusterGuard& cluster, const std::string& name) {
  return occurrences(cluster.migrate({"logs", name}), "verified ");
}

// uid and gid lines of /proc/PID/status, and its uid_map, as the host sees them.
struct HostIds {
  unsigned long uid = 0, gid = 0;
  std::string uidMap;
};

HostIds hostIds(int pid) {
  HostIds ids;
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  std::string key;
  while (status >> key) {
    if (key == "Uid:") status >> ids.uid;
    if (key == "Gid:") status >> ids.gid;
    status.ignore(4096, '\n');
  }
  ids.uidMap = readFileIfExists("/proc/" + std::to_string(pid) + "/uid_map").value_or("");
  return ids;
}

// The container's processes as the host sees them: every process in its init's pid namespace.
std::vector<int> containerProcesses(int init) {
  std::vector<int> out;
  std::error_code ec;
  auto ns = fs::read_symlink("/proc/" + std::to_string(init) + "/ns/pid", ec);
  REQUIRE(!ec);
  for (auto& p : fs::directory_iterator("/proc")) {
    auto name = p.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    if (fs::read_symlink(p.path() / "ns" / "pid", ec) == ns && !ec) out.push_back(std::stoi(name));
  }
  return out;
}

// Every process of the container runs as host id hostId + 1000: inside its
// mapping, and not host root's.
void checkRunsAsMappedUser(ClusterGuard& cluster, const std::string& host, const std::string& name,
                           const json& mapping) {
  auto c = cluster.agentJson(host, {"inspect", name});
  REQUIRE(c["idMapping"] == mapping);
  uint64_t hostId = mapping["hostId"];
  auto processes = containerProcesses(c["state"]["pid"]);
  CHECK(processes.size() >= 3);  // sh's children: echo-server, memhog, counter
  for (int pid : processes) {
    auto ids = hostIds(pid);
    INFO("pid " << pid << " uid " << ids.uid);
    CHECK(ids.uid == hostId + 1000);
    CHECK(ids.gid == hostId + 1000);
    CHECK_THAT(ids.uidMap, Catch::Matches("\\s*0\\s+" + std::to_string(hostId) + "\\s+65536\\s*"));
  }
}

}  // namespace

TEST_CASE("a uid-1000 payload in a user namespace migrates there and back, stop-and-copy then post-copy, keeping counter, memory, TCP and ids") {
  REQUIRE_PRIVILEGES();
  ClusterGuard cluster(2);
  cluster.migrate({"run", "--on", "host1", "--name", "app", "--user", "1000:1000", "test", "sh", "-c",
                   "/usr/local/bin/echo-server 7777 & /usr/local/bin/memhog 32 random & exec /usr/local/bin/counter"});
  auto before = entry(cluster, "app");
  std::string ip = before["ip"], mac = before["mac"];
  json mapping = cluster.agentJson("host1", {"inspect", "app"})["idMapping"];
  REQUIRE(mapping.is_object());
  REQUIRE(waitUntil([&] { return verifiedRounds(cluster, "app") >= 2 && lastCount(cluster, "app") >= 5; }, 30s));
  checkRunsAsMappedUser(cluster, "host1", "app", mapping);
  TcpClient tcp(ip, 7777);
  REQUIRE(waitUntil([&] { return cluster.migrate({"logs", "app"}).find("client connected") != std::string::npos; }, 10s));

  for (auto [to, mode] : {std::pair{"host2", "stop-and-copy"}, std::pair{"host1", "post-copy"}}) {
    INFO(mode << " to " << to);
    auto count = lastCount(cluster, "app");
    auto rounds = verifiedRounds(cluster, "app");
    std::vector<std::string> args = {"app", "--to", to, "--tcp-established"};
    if (std::string(mode) == "post-copy") args.push_back("--postcopy");
    auto result = cluster.migrateJson(args);
    INFO(result.dump(2));
    REQUIRE(result["state"] == "succeeded");
    auto now = entry(cluster, "app");
    CHECK(now["host"] == to);
    CHECK(now["ip"] == ip);
    CHECK(now["mac"] == mac);
    // The same mapping on the target, and every process still uid 1000 in it.
    checkRunsAsMappedUser(cluster, to, "app", mapping);
    // The counter goes on from where it was (not from 1), memhog re-checks
    // its whole buffer, and neither was started again.
    CHECK(waitUntil([&] { return lastCount(cluster, "app") > count + 5; }, 20s));
    auto numbers = counts(cluster.migrate({"logs", "app"}));
    for (size_t i = 1; i < numbers.size(); ++i) CHECK(numbers[i] == numbers[i - 1] + 1);
    CHECK(waitUntil([&] { return verifiedRounds(cluster, "app") >= rounds + 2; }, 30s));
    auto log = cluster.migrate({"logs", "app"});
    CHECK(log.find("CORRUPT") == std::string::npos);
    CHECK(occurrences(log, "ready ") == 1);
  }
  auto echoes = tcp.verified();
  CHECK(waitUntil([&] { return tcp.verified() > echoes + 20; }, 30s));
  auto summary = tcp.stop();
  INFO(summary.dump());
  CHECK(summary["exitStatus"] == 0);
  CHECK(summary["error"].is_null());
  CHECK(summary["verified"] == summary["sent"]);
  CHECK(occurrences(cluster.migrate({"logs", "app"}), "client connected") == 1);
}

TEST_CASE("a container run with --userns host still migrates, as host root") {
  REQUIRE_PRIVILEGES();
  ClusterGuard cluster(2);
  cluster.migrate({"run", "--on", "host1", "--name", "web", "--userns", "host", "test", "/usr/local/bin/counter"});
  auto c = cluster.agentJson("host1", {"inspect", "web"});
  CHECK(c["idMapping"].is_null());
  CHECK_THAT(hostIds(c["state"]["pid"]).uidMap, Catch::Matches("\\s*0\\s+0\\s+4294967295\\s*"));
  REQUIRE(waitUntil([&] { return lastCount(cluster, "web") >= 3; }, 10s));
  auto count = lastCount(cluster, "web");
  auto result = cluster.migrateJson({"web", "--to", "host2"});
  INFO(result.dump(2));
  REQUIRE(result["state"] == "succeeded");
  auto moved = cluster.agentJson("host2", {"inspect", "web"});
  CHECK(moved["idMapping"].is_null());
  CHECK(hostIds(moved["state"]["pid"]).uid == 0);
  CHECK(waitUntil([&] { return lastCount(cluster, "web") > count + 3; }, 10s));
}

TEST_CASE("a user namespace mapping in use on the target refuses the migration before anything is touched") {
  REQUIRE_PRIVILEGES();
  // One mapping for every container of every host: the second container
  // takes the same one on host2.
  ::setenv("AGENT_ARGS", "--userns-range 1073741824:65536", 1);
  struct Unset {
    ~Unset() { ::unsetenv("AGENT_ARGS"); }
  } unset;
  ClusterGuard cluster(2);
  cluster.migrate({"run", "--on", "host1", "--name", "a", "test", "/usr/local/bin/counter"});
  cluster.migrate({"run", "--on", "host2", "--name", "b", "test", "/usr/local/bin/counter"});
  json mapping = {{"hostId", 1073741824}, {"size", 65536}};
  REQUIRE(cluster.agentJson("host1", {"inspect", "a"})["idMapping"] == mapping);
  REQUIRE(cluster.agentJson("host2", {"inspect", "b"})["idMapping"] == mapping);
  // A third on host1 finds the range full.
  auto full = cluster.tryMigrate({"--output", "json", "run", "--on", "host1", "--name", "c", "test", "/usr/local/bin/counter"});
  CHECK(full.status != 0);
  CHECK(errorKindOf(full) == "conflict");
  CHECK_THAT(full.err, Catch::Contains("every user namespace mapping of range 1073741824:65536 is taken"));

  REQUIRE(waitUntil([&] { return lastCount(cluster, "a") >= 3; }, 10s));
  int pid = cluster.agentJson("host1", {"inspect", "a"})["state"]["pid"];
  auto host2Dirs = [] {
    return std::distance(fs::directory_iterator(ClusterGuard::agentState("host2") / "containers"), fs::directory_iterator());
  };
  auto dirsBefore = host2Dirs();
  auto mountsBefore = mountsUnder(ClusterGuard::agentState("host2")).size();

  auto r = cluster.tryMigrate({"a", "--to", "host2", "--tcp-established", "--output", "json"});
  CHECK(r.status != 0);
  INFO(r.out << r.err);
  CHECK_THAT(r.out + r.err, Catch::Contains("user namespace mapping 0:1073741824:65536 of `a` overlaps `b`'s"));
  auto refused = json::parse(r.out, nullptr, false);
  CHECK(refused.value("state", "") == "failed");
  CHECK(refused.value("errorKind", "") == "conflict");
  // Never frozen: the same process, counting on; nothing made on host2.
  auto a = entry(cluster, "a");
  CHECK(a["host"] == "host1");
  CHECK(a["state"] == "running");
  CHECK(cluster.agentJson("host1", {"inspect", "a"})["state"]["pid"] == pid);
  CHECK(cluster.agentJson("host1", {"inspect", "a"})["state"]["checkpointedAt"] == "");
  auto count = lastCount(cluster, "a");
  CHECK(waitUntil([&] { return lastCount(cluster, "a") > count + 2; }, 10s));
  CHECK(host2Dirs() == dirsBefore);
  CHECK(mountsUnder(ClusterGuard::agentState("host2")).size() == mountsBefore);
  CHECK(cluster.agentJson("host2", {"ps"}).size() == 1);
}

TEST_CASE("PostgreSQL under pgbench -c 4 migrates with its connections kept and every committed transaction present") {
  REQUIRE_PRIVILEGES();
  ClusterGuard cluster(2);
  for (auto host : {"host1", "host2"}) cluster.agentJson(host, {"image", "import", POSTGRES_IMAGE, "pg"});
  cluster.migrate({"run", "--on", "host1", "--name", "pg", "pg", "/usr/local/bin/pg-start", "-c",
                   "shared_buffers=32MB", "-c", "max_connections=20"});
  std::string ip = entry(cluster, "pg")["ip"];
  REQUIRE(waitUntil([&] { return cluster.migrate({"logs", "pg"}).find("ready to accept connections") != std::string::npos; }, 60s));
  const std::string bin = "/usr/lib/postgresql/15/bin/";
  auto inClient = [&](std::vector<std::string> args) {
    std::vector<std::string> full = {"nsenter", "--net=/run/netns/client", "--"};
    full.insert(full.end(), args.begin(), args.end());
    return SubprocessOptions::of(full);
  };
  auto init = runCapture(inClient({bin + "pgbench", "-h", ip, "-U", "postgres", "-i", "-s", "2", "postgres"}));
  INFO(init.err);
  REQUIRE(init.status == 0);

  // pgbench for 25 s on 4 connections; the migration happens in the middle.
  // At most 300 transactions a second: unthrottled, pgbench and PostgreSQL
  // take both cores and the agents' heartbeats can starve (issue 11).
  int out[2];
  REQUIRE(::pipe2(out, O_CLOEXEC) == 0);
  Fd readEnd(out[0]), writeEnd(out[1]);
  auto bench = inClient({bin + "pgbench", "-h", ip, "-U", "postgres", "-c", "4", "-j", "2", "-R", "300", "-T", "25", "postgres"});
  bench.stdoutFd = writeEnd.get();
  bench.stderrFd = writeEnd.get();
  Subprocess pgbench(bench);
  writeEnd.reset();
  // The migration starts once the load runs: transactions are committing.
  auto committed = [&] {
    auto r = runCapture(inClient({bin + "psql", "-h", ip, "-U", "postgres", "-Atc",
                                  "select count(*) from pgbench_history", "postgres"}));
    return r.status == 0 ? std::stoul(r.out) : 0ul;
  };
  REQUIRE(waitUntil([&] { return committed() >= 600; }, 30s, 500ms));
  // The postgres processes dropped root: uid 999 in the container's namespace.
  auto c = cluster.agentJson("host1", {"inspect", "pg"});
  uint64_t hostId = c["idMapping"]["hostId"];
  for (int pid : containerProcesses(c["state"]["pid"])) CHECK(hostIds(pid).uid == hostId + 999);

  auto result = cluster.migrateJson({"pg", "--to", "host2", "--tcp-established"});
  INFO(result.dump(2));
  CHECK(result["state"] == "succeeded");
  CHECK(entry(cluster, "pg")["host"] == "host2");

  int status = pgbench.wait();
  std::string report;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(readEnd.get(), buf, sizeof buf)) > 0) report.append(buf, static_cast<size_t>(n));
  INFO(report);
  CHECK(status == 0);
  CHECK(report.find("aborted") == std::string::npos);
  std::smatch processed, failed;
  REQUIRE(std::regex_search(report, processed, std::regex("number of transactions actually processed: (\\d+)")));
  REQUIRE(std::regex_search(report, failed, std::regex("number of failed transactions: (\\d+)")));
  CHECK(failed[1] == "0");
  auto count = runCapture(inClient({bin + "psql", "-h", ip, "-U", "postgres", "-Atc",
                                    "select count(*) from pgbench_history", "postgres"}));
  INFO(count.err);
  REQUIRE(count.status == 0);
  CHECK(std::stoul(count.out) == std::stoul(processed[1]));
  CHECK(std::stoul(processed[1]) > 100);
  // Still uid 999 on host2, inside the same mapping.
  auto moved = cluster.agentJson("host2", {"inspect", "pg"});
  CHECK(moved["idMapping"]["hostId"] == hostId);
  for (int pid : containerProcesses(moved["state"]["pid"])) CHECK(hostIds(pid).uid == hostId + 999);
}
