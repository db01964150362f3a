// Issue 2 end to end on one host, through the migrate-agent command line a
// user would type: real runc under conmon, real CRIU, overlay storage.
#include <catch2/catch.hpp>
#include <signal.h>

#include <cstring>
#include <fstream>

#include "common/files.h"
#include "criu/images/core.pb.h"
#include "tests/support/harness.h"
#include "tests/support/hostile-bundle.h"

using namespace migrate;
using namespace migrate::test;
using nlohmann::json;

namespace {

std::string logsOf(AgentHome& home, const std::string& name) { return home.agent({"logs", name}); }

// An attacker's edit, with CRIU's own generated class: core-1.img re-encoded
// with task 1's effective capabilities widened to `capEff`.
void editCriuCore(const fs::path& path, uint32_t capEff) {
  auto bytes = readFile(path);
  REQUIRE(bytes.size() > 12);
  uint32_t size;
  std::memcpy(&size, bytes.data() + 8, 4);
  REQUIRE(12 + size == bytes.size());
  criupb::core_entry core;
  REQUIRE(core.ParseFromString(bytes.substr(12)));
  core.mutable_thread_core()->mutable_creds()->mutable_cap_eff()->Set(0, capEff);
  auto edited = core.SerializeAsString();
  size = static_cast<uint32_t>(edited.size());
  writeFileAtomic(path, bytes.substr(0, 8) + std::string(reinterpret_cast<const char*>(&size), 4) + edited);
}

}  // namespace

TEST_CASE("a counter exported, removed, imported and restored on a fresh host continues counting") {
  REQUIRE_PRIVILEGES();
  AgentPair agents;
  auto& [source, target] = agents;
  TempDir scratch("/var/tmp", "migrate-bundle");
  auto bundle = (scratch.path() / "web.tar.zst").string();

  // The container writes a file and deletes one from the image before counting.
  source.agent({"run", "--name", "web", "test", "sh", "-c",
                "echo written-before-checkpoint > /root/note; rm /etc/group; exec /usr/local/bin/counter"});
  REQUIRE(waitUntil([&] { return lastCount(source, "web") >= 5; }, std::chrono::seconds(10)));

  auto result = source.agentJson({"checkpoint", "web", "--export", bundle});
  CHECK(result["export"]["bytesCompressed"].get<uint64_t>() > 0);
  auto stopped = lastCount(source, "web");
  auto ps = source.agentJson({"ps"});
  REQUIRE(ps.size() == 1);
  CHECK(ps[0]["state"]["status"] == "checkpointed");
  source.agent({"rm", "web"});
  CHECK(source.agentJson({"ps"}).empty());

  // Restore on an agent with its own, fresh storage.
  auto restored = target.agentJson({"restore", "--import", bundle});
  CHECK(restored["name"] == "web");
  CHECK(restored["state"]["status"] == "running");
  REQUIRE(waitUntil([&] { return lastCount(target, "web") > stopped + 3; }, std::chrono::seconds(10)));

  // The log came along; after the checkpoint the count went on at last+1, never from 1 again.
  auto all = counts(logsOf(target, "web"));
  auto at = std::find(all.begin(), all.end(), stopped);
  REQUIRE(at != all.end());
  REQUIRE(at + 1 != all.end());
  CHECK(*(at + 1) == stopped + 1);
  CHECK(std::count(all.begin(), all.end(), 1ul) == 1);

  // Files the container wrote or deleted are as it left them, on fresh storage.
  fs::path rootfs = restored["dir"].get<std::string>() + "/rootfs";
  CHECK(readFile(rootfs / "root/note") == "written-before-checkpoint\n");
  CHECK_FALSE(fs::exists(rootfs / "etc/group"));
  CHECK(fs::exists(rootfs / "etc/passwd"));
}

TEST_CASE("a program holding 64 MiB of random data verifies its memory after restore") {
  REQUIRE_PRIVILEGES();
  AgentPair agents;
  auto& [source, target] = agents;
  TempDir scratch("/var/tmp", "migrate-bundle");
  auto bundle = (scratch.path() / "mem.tar.zst").string();

  source.agent({"run", "--name", "mem", "test", "/usr/local/bin/memhog", "64", "random"});
  auto verifiedRounds = [](AgentHome& home) {
    auto log = home.agent({"logs", "mem"});
    size_t n = 0;
    for (size_t p = 0; (p = log.find("verified ", p)) != std::string::npos; ++p) ++n;
    return n;
  };
  REQUIRE(waitUntil([&] { return verifiedRounds(source) >= 2; }, std::chrono::seconds(20)));
  source.agent({"checkpoint", "mem", "--export", bundle});
  auto before = verifiedRounds(source);
  source.agent({"rm", "mem"});

  target.agent({"restore", "--import", bundle});
  REQUIRE(waitUntil([&] { return verifiedRounds(target) >= before + 2; }, std::chrono::seconds(20)));
  auto log = target.agent({"logs", "mem"});
  CHECK(log.find("CORRUPT") == std::string::npos);
  // One fill only: the program was not started again.
  size_t readyLines = 0;
  for (size_t p = 0; (p = log.find("ready ", p)) != std::string::npos; ++p) ++readyLines;
  CHECK(readyLines == 1);
  CHECK(target.agentJson({"inspect", "mem"})["state"]["status"] == "running");
}

TEST_CASE("containers outlive the agent process: a new agent lists and controls them") {
  REQUIRE_PRIVILEGES();
  AgentHome home("solo");
  home.importTestImage();
  // Each command is a fresh migrate-agent process reading the persisted state.
  home.agent({"run", "--name", "c1", "test", "/usr/local/bin/counter"});
  REQUIRE(waitUntil([&] { return lastCount(home, "c1") >= 3; }, std::chrono::seconds(10)));
  auto ps = home.agentJson({"ps"});
  REQUIRE(ps.size() == 1);
  CHECK(ps[0]["state"]["status"] == "running");
  int pid = ps[0]["state"]["pid"];
  CHECK(processAlive(pid));
  home.agent({"stop", "--time", "2", "c1"});
  CHECK(home.agentJson({"inspect", "c1"})["state"]["status"] == "stopped");
  CHECK(waitUntil([&] { return !processAlive(pid); }, std::chrono::seconds(5)));
  home.agent({"rm", "c1"});
  CHECK(home.agentJson({"ps"}).empty());
}

TEST_CASE("a copy of a user-namespaced container is refused beside the original, whose mapping it would share") {
  REQUIRE_PRIVILEGES();
  AgentHome home("solo");
  home.importTestImage();
  TempDir scratch("/var/tmp", "migrate-bundle");
  auto bundle = (scratch.path() / "c.tar.zst").string();
  auto orig = home.agentJson({"run", "--name", "orig", "test", "/usr/local/bin/counter"});
  REQUIRE(orig["idMapping"].is_object());
  REQUIRE(waitUntil([&] { return lastCount(home, "orig") >= 3; }, std::chrono::seconds(10)));
  home.agent({"checkpoint", "--leave-running", "orig", "--export", bundle});
  auto r = home.tryAgent({"--output", "json", "restore", "--import", bundle, "--name", "copy"});
  CHECK(r.status != 0);
  CHECK(errorKindOf(r) == "conflict");
  std::string mapping = "0:" + std::to_string(orig["idMapping"]["hostId"].get<uint64_t>()) + ":65536";
  CHECK_THAT(r.err, Catch::Contains("user namespace mapping " + mapping + " of `copy` overlaps `orig`'s"));
  CHECK(home.agentJson({"ps"}).size() == 1);
  // orig's idmapped lower, overlay and checkpoint tmpfs; nothing of the copy's.
  std::string origDir = home.agentJson({"inspect", "orig"})["dir"];
  for (auto& m : mountsUnder(home.dir() / "containers")) CHECK(m.rfind(origDir + "/", 0) == 0);
  CHECK(std::distance(fs::directory_iterator(home.dir() / "containers"), fs::directory_iterator()) == 1);
}

TEST_CASE("checkpoint with --leave-running keeps the container going, and a copy restores under a new name") {
  REQUIRE_PRIVILEGES();
  AgentHome home("solo");
  home.importTestImage();
  TempDir scratch("/var/tmp", "migrate-bundle");
  auto bundle = (scratch.path() / "c.tar.zst").string();
  // In the host's user namespace: a copy beside the original needs no mapping of its own.
  home.agent({"run", "--name", "orig", "--userns", "host", "test", "/usr/local/bin/counter"});
  REQUIRE(waitUntil([&] { return lastCount(home, "orig") >= 3; }, std::chrono::seconds(10)));
  home.agent({"checkpoint", "--leave-running", "orig", "--export", bundle});
  CHECK(home.agentJson({"inspect", "orig"})["state"]["status"] == "running");
  auto copy = home.agentJson({"restore", "--import", bundle, "--name", "copy"});
  CHECK(copy["name"] == "copy");
  CHECK(copy["id"] != home.agentJson({"inspect", "orig"})["id"]);
  auto base = lastCount(home, "copy");
  CHECK(waitUntil([&] { return lastCount(home, "copy") > base + 2; }, std::chrono::seconds(10)));
  CHECK(home.agentJson({"ps"}).size() == 2);
}

TEST_CASE("a corrupt bundle is refused with a clear error and leaves nothing behind") {
  REQUIRE_PRIVILEGES();
  AgentPair agents;
  auto& [source, target] = agents;
  TempDir scratch("/var/tmp", "migrate-bundle");
  auto bundle = scratch.path() / "c.tar.zst";
  source.agent({"run", "--name", "c", "test", "/usr/local/bin/counter"});
  REQUIRE(waitUntil([&] { return lastCount(source, "c") >= 2; }, std::chrono::seconds(10)));
  source.agent({"checkpoint", "c", "--export", bundle.string()});
  auto bytes = readFile(bundle);

  SECTION("truncated") { writeFileAtomic(bundle, bytes.substr(0, bytes.size() / 2)); }
  SECTION("garbage in the middle") {
    for (size_t i = bytes.size() / 3; i < bytes.size() / 3 + 4096 && i < bytes.size(); ++i) bytes[i] ^= 0x5a;
    writeFileAtomic(bundle, bytes);
  }
  auto r = target.tryAgent({"--output", "json", "restore", "--import", bundle.string()});
  CHECK(r.status != 0);
  INFO(r.err);
  CHECK(errorKindOf(r) == "invalid-input");
  CHECK((r.err.find("zstd") != std::string::npos || r.err.find("bundle") != std::string::npos));
  CHECK(target.agentJson({"ps"}).empty());
  size_t entries = 0;
  for (auto& e : fs::directory_iterator(target.dir() / "containers")) {
    (void)e;
    ++entries;
  }
  CHECK(entries == 0);
  // The source still has its checkpoint and can restore from it.
  CHECK(source.agentJson({"restore", "c"})["state"]["status"] == "running");
}

TEST_CASE("a bundle whose core-1.img was edited to CapEff 0xfeffffff is refused, and the untouched one restores") {
  REQUIRE_PRIVILEGES();
  AgentPair agents;
  auto& [source, target] = agents;
  TempDir scratch("/var/tmp", "migrate-bundle");
  auto bundle = scratch.path() / "c.tar.zst";
  auto hostile = scratch.path() / "hostile.tar.zst";
  source.agent({"run", "--name", "c", "test", "/usr/local/bin/counter"});
  REQUIRE(waitUntil([&] { return lastCount(source, "c") >= 2; }, std::chrono::seconds(10)));
  source.agent({"checkpoint", "c", "--export", bundle.string()});

  {
    HostileBundle b(bundle);
    editCriuCore(b.dir() / "checkpoint" / "core-1.img", 0xfeffffff);
    b.repack(hostile, source);
  }
  auto r = target.tryAgent({"--output", "json", "restore", "--import", hostile.string()});
  INFO(r.err);
  CHECK(r.status != 0);
  CHECK(errorKindOf(r) == "invalid-input");
  CHECK(occurrences(r.err, "criu image `core-1.img`: task 1 CapEff 0xfeffffff exceeds the spec's effective set") == 1);
  CHECK(occurrences(r.err, "CAP_SYS_ADMIN") == 1);
  // Nothing left: no container, process, mount or tmpfs of the target's.
  CHECK(target.agentJson({"ps"}).empty());
  CHECK(occurrences(readFile("/proc/self/mountinfo"), target.dir().string()) == 0);
  CHECK(runCapture(SubprocessOptions::of({"pgrep", "-f", target.dir().string()})).out == "");
  size_t entries = 0;
  for (auto& e : fs::directory_iterator(target.dir() / "containers")) {
    (void)e;
    ++entries;
  }
  CHECK(entries == 0);

  // The same bundle as exported restores right after.
  auto restored = target.agentJson({"restore", "--import", bundle.string()});
  CHECK(restored["state"]["status"] == "running");
  auto base = lastCount(target, "c");
  CHECK(waitUntil([&] { return lastCount(target, "c") > base + 2; }, std::chrono::seconds(10)));

  // And the helper's own repack, without an edit, is a bundle that restores:
  // what the attack tests see refused is the attack, not the repacking.
  auto plain = scratch.path() / "plain.tar.zst";
  HostileBundle(bundle).repack(plain, source);
  target.agent({"rm", "--force", "c"});  // its user namespace mapping is the bundle's
  auto copy = target.agentJson({"restore", "--import", plain.string(), "--name", "plain"});
  CHECK(copy["state"]["status"] == "running");
}
