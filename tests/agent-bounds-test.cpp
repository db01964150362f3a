// Issue 9, items 6 and 10, through the migrate-agent command line with real
// runc and CRIU: a restore that CRIU cannot finish is killed at its deadline
// and leaves nothing running; two imports of one name do not both win; an
// import killed midway is cleaned up, tmpfs and all, by the next command.
#include <catch2/catch.hpp>
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include "common/files.h"
#include "common/subprocess.h"
#include "tests/support/harness.h"
#include "tests/support/hostile-bundle.h"

using namespace migrate;
using namespace migrate::test;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

// Live processes working for `home`: CRIU works in a container's criu-work
// dir, conmon and runc name the container dir in their arguments, and the
// container's own processes have their cwd in its rootfs.
std::vector<int> processesOf(const AgentHome& home) {
  std::vector<int> pids;
  std::string dir = home.dir().string();
  for (auto& p : fs::directory_iterator("/proc")) {
    std::string name = p.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    int pid = std::stoi(name);
    if (pid == ::getpid()) continue;
    std::error_code ec;
    std::string cwd = fs::read_symlink(p.path() / "cwd", ec).string();
    std::string cmdline;
    try {
      cmdline = readFileIfExists(p.path() / "cmdline").value_or("");
    } catch (const std::exception&) {
      continue;  // gone meanwhile
    }
    std::replace(cmdline.begin(), cmdline.end(), '\0', ' ');
    if ((cwd.rfind(dir, 0) == 0 || cmdline.find(dir) != std::string::npos) && processAlive(pid)) pids.push_back(pid);
  }
  return pids;
}

// The filesystem options (the last field) of the mount at `point`.
std::string mountOptions(const fs::path& point) {
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string id, parent, dev, root, mountPoint;
    fields >> id >> parent >> dev >> root >> mountPoint;
    if (mountPoint == point.string()) return line.substr(line.rfind(' ') + 1);
  }
  return "";
}

std::vector<fs::path> stagingDirs(const AgentHome& home) {
  std::vector<fs::path> found;
  for (auto& e : fs::directory_iterator(home.dir() / "containers")) {
    if (e.path().filename().string().rfind(".import", 0) == 0) found.push_back(e.path());
  }
  return found;
}

// `migrate-agent --state DIR --host HOST args...` for `home`, started, not waited for.
SubprocessOptions agentCommand(const AgentHome& home, const std::vector<std::string>& args) {
  std::vector<std::string> full = {binary("migrate-agent").string(), "--state", home.dir().string(), "--host", home.host()};
  full.insert(full.end(), args.begin(), args.end());
  return SubprocessOptions::of(full);
}

// A program holding 16 MiB of random memory checkpointed on `source` and exported to `bundle`, then removed there.
void exportCounter(AgentHome& source, const std::string& name, const fs::path& bundle) {
  source.agent({"run", "--name", name, "test", "/usr/local/bin/memhog", "16", "random"});
  REQUIRE(waitUntil([&] { return source.agent({"logs", name}).find("verified ") != std::string::npos; },
                    std::chrono::seconds(20)));
  source.agent({"checkpoint", name, "--export", bundle.string()});
  source.agent({"rm", name});
}

}  // namespace

TEST_CASE("a restore CRIU cannot finish (pages-1.img cut to 4 KiB) is killed at its deadline, and a whole bundle then restores") {
  REQUIRE_PRIVILEGES();
  AgentPair agents;
  auto& [source, target] = agents;
  TempDir scratch("/var/tmp", "migrate-bundle");
  auto bundle = scratch.path() / "m.tar.zst";
  auto hostile = scratch.path() / "cut.tar.zst";
  exportCounter(source, "m", bundle);
  {
    HostileBundle b(bundle);
    fs::path pages = b.dir() / "checkpoint" / "pages-1.img";
    REQUIRE(fs::file_size(pages) > (1u << 20));
    fs::resize_file(pages, 4096);
    b.repack(hostile, source);
  }

  // Twice: stopped by the deadline (with room for the log), then by the log's cap.
  auto restoreHostile = [&](const std::vector<std::string>& flags, const std::string& why) {
    INFO("stopped because it " << why);
    std::vector<std::string> args = {"--output", "json"};
    args.insert(args.end(), flags.begin(), flags.end());
    args.insert(args.end(), {"restore", "--import", hostile.string()});
    auto start = Clock::now();
    auto r = target.tryAgent(args);
    double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    INFO(r.err);
    CHECK(r.status != 0);
    CHECK(errorKindOf(r) == "failed");
    CHECK(seconds < 30);
    CHECK_THAT(r.err, Catch::Contains("restore of `m`: criu: restore of `") && Catch::Contains(why) &&
                          Catch::Contains("CRIU, runc and conmon were killed"));
    CHECK(r.err.size() < (80u << 10));  // the log is quoted by its tail
    // CRIU, runc, conmon and the half-restored tasks are gone.
    CHECK(waitUntil([&] { return processesOf(target).empty(); }, std::chrono::seconds(5)));
    auto failed = target.agentJson({"inspect", "m"});
    CHECK(failed["state"]["status"] == "checkpointed");
    // restore.log on disk: cut to its tail.
    fs::path log = failed["dir"].get<std::string>() + "/criu-work/restore.log";
    REQUIRE(fs::exists(log));
    CHECK(fs::file_size(log) < (1u << 20));
    CHECK_THAT(readFile(log), Catch::StartsWith("[migrate-agent: cut from "));
    // The agent never held the log: no migrate-agent run by this test grew past 200 MiB.
    struct rusage usage;
    REQUIRE(::getrusage(RUSAGE_CHILDREN, &usage) == 0);
    CHECK(usage.ru_maxrss < 200 * 1024);  // KiB

    target.agent({"rm", "m"});
    CHECK(mountsUnder(target.dir()).empty());  // the tmpfs, CRIU's cgroup yard, runc's criu-root
    std::string id = failed["id"];
    CHECK_FALSE(fs::exists(target.dir() / "runc" / id));
    for (auto& hierarchy : fs::directory_iterator("/sys/fs/cgroup")) {
      CHECK_FALSE(fs::exists(hierarchy.path() / "migrate" / "dst" / id));
    }
  };
  restoreHostile({"--restore-timeout", "10", "--criu-log-max-bytes", std::to_string(1ull << 30)},
                 "did not finish within 10 s");
  restoreHostile({"--restore-timeout", "60"}, "wrote more than 67108864 bytes of restore.log");

  auto restored = target.agentJson({"restore", "--import", bundle.string()});
  CHECK(restored["state"]["status"] == "running");
  auto verified = [&] { return occurrences(target.agent({"logs", "m"}), "verified "); };
  auto before = verified();
  CHECK(waitUntil([&] { return verified() > before; }, std::chrono::seconds(20)));
  CHECK(target.agent({"logs", "m"}).find("CORRUPT") == std::string::npos);
}

TEST_CASE("two concurrent imports of one bundle: exactly one restores, the other is told the name is in use") {
  REQUIRE_PRIVILEGES();
  AgentPair agents;
  auto& [source, target] = agents;
  TempDir scratch("/var/tmp", "migrate-bundle");
  auto bundle = scratch.path() / "m.tar.zst";
  exportCounter(source, "m", bundle);

  struct Run {
    Fd out, err;
    std::optional<Subprocess> process;
    int status = -1;
  };
  Run runs[2];
  for (int i = 0; i < 2; ++i) {
    runs[i].out = openOrFail(scratch.path() / ("out" + std::to_string(i)), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    runs[i].err = openOrFail(scratch.path() / ("err" + std::to_string(i)), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    auto options = agentCommand(target, {"restore", "--import", bundle.string()});
    options.stdoutFd = runs[i].out.get();
    options.stderrFd = runs[i].err.get();
    runs[i].process.emplace(options);
  }
  for (auto& run : runs) run.status = run.process->wait();
  std::string err0 = readFile(scratch.path() / "err0"), err1 = readFile(scratch.path() / "err1");
  INFO("first: " << runs[0].status << " " << err0);
  INFO("second: " << runs[1].status << " " << err1);
  REQUIRE(((runs[0].status == 0) != (runs[1].status == 0)));
  const std::string& loser = runs[0].status == 0 ? err1 : err0;
  CHECK_THAT(loser, Catch::Contains("name `m` is in use on dst"));
  auto ps = target.agentJson({"ps"});
  REQUIRE(ps.size() == 1);
  CHECK(ps[0]["state"]["status"] == "running");
  CHECK(stagingDirs(target).empty());
  CHECK(fs::is_empty(target.dir() / "names"));  // reservations go with their imports
}

TEST_CASE("an import killed midway is removed, tmpfs and all, by the next command") {
  REQUIRE_PRIVILEGES();
  AgentPair agents;
  auto& [source, target] = agents;
  TempDir scratch("/var/tmp", "migrate-bundle");
  auto bundle = scratch.path() / "m.tar.zst";
  exportCounter(source, "m", bundle);
  std::string bytes = readFile(bundle);
  REQUIRE(bytes.size() > (8u << 20));  // random memory: the bundle does not compress

  int fds[2];
  REQUIRE(::pipe2(fds, O_CLOEXEC) == 0);
  Fd readEnd(fds[0]), writeEnd(fds[1]);
  auto options = agentCommand(target, {"restore", "--import", "-"});
  options.stdinFd = readEnd.get();
  Subprocess import(options);
  readEnd.reset();
  // Half the stream: the manifest, and half the memory on the tmpfs by now.
  for (size_t done = 0; done < bytes.size() / 2;) {
    auto n = ::write(writeEnd.get(), bytes.data() + done, bytes.size() / 2 - done);
    REQUIRE(n > 0);
    done += static_cast<size_t>(n);
  }
  REQUIRE(waitUntil([&] { return !stagingDirs(target).empty() && !mountsUnder(target.dir()).empty(); },
                    std::chrono::seconds(10)));
  import.kill(SIGKILL);
  CHECK(import.wait() == 128 + SIGKILL);
  writeEnd.reset();
  auto staging = stagingDirs(target);
  REQUIRE(staging.size() == 1);
  CHECK(mountsUnder(target.dir()) == std::vector<std::string>{(staging[0] / "checkpoint").string()});
  // Mounted once the manifest was read, sized from it.
  auto tmpfs = mountOptions(staging[0] / "checkpoint");
  CHECK_THAT(tmpfs, Catch::Contains("size=") && Catch::Contains("nr_inodes="));

  // Any next command of this agent clears it.
  CHECK(target.agentJson({"ps"}).empty());
  CHECK(stagingDirs(target).empty());
  CHECK(mountsUnder(target.dir()).empty());
  CHECK(target.agentJson({"restore", "--import", bundle.string()})["state"]["status"] == "running");
}

TEST_CASE("a bundle without rootfs-diff/ restores with an empty upper layer") {
  REQUIRE_PRIVILEGES();
  AgentPair agents;
  auto& [source, target] = agents;
  TempDir scratch("/var/tmp", "migrate-bundle");
  auto bundle = scratch.path() / "m.tar.zst";
  auto bare = scratch.path() / "bare.tar.zst";
  exportCounter(source, "m", bundle);
  {
    HostileBundle b(bundle);
    removeTree(b.dir() / "rootfs-diff");
    fs::remove(b.dir() / "deleted.files");
    b.repack(bare, source);
  }
  auto restored = target.agentJson({"restore", "--import", bare.string()});
  CHECK(restored["state"]["status"] == "running");
  CHECK(fs::is_directory(restored["dir"].get<std::string>() + "/upper"));
  auto verified = [&] { return occurrences(target.agent({"logs", "m"}), "verified "); };
  auto before = verified();
  CHECK(waitUntil([&] { return verified() > before; }, std::chrono::seconds(20)));
}
