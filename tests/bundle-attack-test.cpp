// Issue 9, items 2 and 5, through the migrate-agent command line with real
// runc and CRIU. Each hostile bundle is made from a real exported one and
// signed by its source's own key, as a compromised source host would sign
// it: what stops it is the target's checks after the signature.
//  - spec.dump with hooks, a host file as a bind-mount source, a host device
//    with a device-cgroup allow, extra capabilities: restored with the
//    target's own spec; no hook runs, no host file or device reaches it.
//  - config.dump or manifest identifiers that are paths or carry newlines:
//    refused naming the field; nothing written outside the state dir.
#include <catch2/catch.hpp>

#include <sstream>

#include "common/files.h"
#include "tests/support/harness.h"
#include "tests/support/hostile-bundle.h"

using namespace migrate;
using namespace migrate::test;
using nlohmann::json;

namespace {

// A counter checkpointed and exported from `source` into `bundle`, then removed there.
void exportCounter(AgentHome& source, const fs::path& bundle) {
  source.agent({"run", "--name", "web", "test", "/usr/local/bin/counter"});
  REQUIRE(waitUntil([&] { return lastCount(source, "web") >= 3; }, std::chrono::seconds(10)));
  source.agent({"checkpoint", "web", "--export", bundle.string()});
  source.agent({"rm", "web"});
}

// The capability sets of a process, from /proc/PID/status: "CapEff" -> bits.
uint64_t capabilities(int pid, const std::string& set) {
  std::istringstream status(readFile("/proc/" + std::to_string(pid) + "/status"));
  std::string key, value;
  while (status >> key >> value) {
    if (key == set + ":") return std::stoull(value, nullptr, 16);
  }
  FAIL("no " << set << " in /proc/" << pid << "/status");
  return 0;
}

constexpr uint64_t kCapSysAdmin = 1ull << 21;

}  // namespace

TEST_CASE("a spec.dump with hooks, a host file, a host device and extra capabilities is not used: the target's own spec is") {
  REQUIRE_PRIVILEGES();
  AgentPair agents;
  auto& [source, target] = agents;
  TempDir scratch("/var/tmp", "migrate-bundle");
  auto bundle = scratch.path() / "web.tar.zst";
  auto hostile = scratch.path() / "spec.tar.zst";
  fs::path marker = scratch.path() / "hook-ran";
  exportCounter(source, bundle);
  {
    HostileBundle b(bundle);
    auto spec = json::parse(readFile(b.dir() / "spec.dump"));
    json hook = {{"path", "/bin/sh"}, {"args", {"sh", "-c", "id >> " + marker.string()}}};
    spec["hooks"] = {{"prestart", {hook}}, {"createRuntime", {hook}}, {"createContainer", {hook}}, {"poststart", {hook}}};
    for (auto& mount : spec["mounts"]) {
      if (mount["destination"] == "/etc/hosts") mount["source"] = "/etc/shadow";
    }
    spec["linux"]["devices"] = {{{"path", "/dev/hostdisk"}, {"type", "b"}, {"major", 7}, {"minor", 0}, {"fileMode", 438}}};
    spec["linux"]["resources"]["devices"] = {{{"allow", true}, {"access", "rwm"}}};
    for (auto set : {"bounding", "effective", "permitted"}) spec["process"]["capabilities"][set].push_back("CAP_SYS_ADMIN");
    writeFileAtomic(b.dir() / "spec.dump", spec.dump());
    b.repack(hostile, source);
  }

  auto r = target.tryAgent({"--output", "json", "restore", "--import", hostile.string()});
  INFO(r.err);
  REQUIRE(r.status == 0);
  // What was in spec.dump and not used is said.
  CHECK_THAT(r.err, Catch::Contains("spec.dump differs from this host's spec, not used") && Catch::Contains("/hooks") &&
                        Catch::Contains("/etc/shadow") && Catch::Contains("/linux/devices"));
  CHECK_FALSE(fs::exists(marker));  // no hook ran, at any stage
  auto restored = json::parse(r.out);
  int pid = restored["state"]["pid"];
  // The container's /etc/hosts is its generated one, not the host's shadow file; no host device.
  fs::path root = "/proc/" + std::to_string(pid) + "/root";
  auto hosts = readFile(root / "etc/hosts");
  CHECK(hosts.find("localhost") != std::string::npos);
  CHECK(hosts != readFile("/etc/shadow"));
  CHECK_FALSE(fs::exists(root / "dev/hostdisk"));
  // The spec runc was given is the target's own.
  auto spec = json::parse(readFile(restored["dir"].get<std::string>() + "/bundle/config.json"));
  CHECK_FALSE(spec.contains("hooks"));
  CHECK_FALSE(spec["linux"].contains("devices"));
  CHECK(spec["linux"]["resources"]["devices"] == json::array({{{"allow", false}, {"access", "rwm"}}}));
  CHECK(spec["process"]["capabilities"]["effective"].dump().find("CAP_SYS_ADMIN") == std::string::npos);
  CHECK((capabilities(pid, "CapEff") & kCapSysAdmin) == 0);
  CHECK((capabilities(pid, "CapBnd") & kCapSysAdmin) == 0);
  // And it runs on, counting from where it was.
  auto at = lastCount(target, "web");
  CHECK(waitUntil([&] { return lastCount(target, "web") > at; }, std::chrono::seconds(10)));
}

TEST_CASE("identifiers in a bundle that are paths or carry newlines are refused, naming the field, and leave nothing") {
  REQUIRE_PRIVILEGES();
  AgentPair agents;
  auto& [source, target] = agents;
  TempDir scratch("/var/tmp", "migrate-bundle");
  auto bundle = scratch.path() / "web.tar.zst";
  exportCounter(source, bundle);
  // Where a `../` id would have put the container: beside the state dir.
  fs::path escape = target.dir().parent_path() / "escaped-container";

  struct Attack {
    const char* what;
    const char* file;   // manifest.json or config.dump
    const char* field;  // its key
    std::string value;
    const char* refusal;
  };
  std::string traversal = "../../../" + escape.filename().string();
  std::vector<Attack> attacks = {
      {"config.dump id as a path", "config.dump", "id", traversal, "config.dump: `id` `../../../escaped-container`: must be 32 lowercase hex"},
      {"manifest id as a path", "manifest.json", "containerId", traversal, "bundle manifest: `containerId`"},
      {"both ids as a path", "both", "id", traversal, "bundle manifest: `containerId`"},
      {"a name with a newline and a slash", "config.dump", "name", "evil\n/name", "config.dump: `name` `evil\\x0a/name`"},
      {"a manifest name with a slash", "manifest.json", "containerName", "../web", "bundle manifest: `containerName`"},
      {"a hostname with a newline", "config.dump", "hostname", "web\n127.0.0.1 evil", "config.dump: `hostname`"},
      {"a source host with a slash", "manifest.json", "sourceHost", "../host1", "bundle manifest: `sourceHost`"},
  };
  for (auto& attack : attacks) {
    INFO(attack.what);
    auto hostile = scratch.path() / "hostile.tar.zst";
    {
      HostileBundle b(bundle);
      auto edit = [&](const char* file, const char* field) {
        auto j = json::parse(readFile(b.dir() / file));
        j[field] = attack.value;
        writeFileAtomic(b.dir() / file, j.dump());
      };
      if (std::string(attack.file) == "both") {
        edit("config.dump", "id");
        edit("manifest.json", "containerId");
      } else {
        edit(attack.file, attack.field);
      }
      b.repack(hostile, source);
    }
    auto r = target.tryAgent({"--output", "json", "restore", "--import", hostile.string()});
    CHECK(r.status != 0);
    CHECK(errorKindOf(r) == "invalid-input");
    CHECK_THAT(r.err, Catch::Contains(attack.refusal));
    // Nothing outside the state dir, nothing left inside it.
    CHECK_FALSE(fs::exists(escape));
    CHECK(target.agentJson({"ps"}).empty());
    CHECK(mountsUnder(target.dir()).empty());
    std::vector<std::string> left;
    for (auto& e : fs::directory_iterator(target.dir() / "containers")) left.push_back(e.path().filename());
    CHECK(left.empty());
  }
  // A spec.dump nested a quarter of a million levels deep: copying or
  // comparing it would recurse past the stack; refused before that.
  {
    auto hostile = scratch.path() / "deep.tar.zst";
    HostileBundle b(bundle);
    writeFileAtomic(b.dir() / "spec.dump", std::string(1 << 18, '[') + std::string(1 << 18, ']'));
    b.repack(hostile, source);
    auto r = target.tryAgent({"--output", "json", "restore", "--import", hostile.string()});
    CHECK(r.status != 0);
    CHECK(errorKindOf(r) == "invalid-input");
    CHECK_THAT(r.err, Catch::Contains("spec.dump: nests deeper than the limit of 64 levels"));
    CHECK(target.agentJson({"ps"}).empty());
    CHECK(mountsUnder(target.dir()).empty());
  }
  // The untouched bundle restores right after.
  CHECK(target.agentJson({"restore", "--import", bundle.string()})["state"]["status"] == "running");
}
