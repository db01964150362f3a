#include "agent/runtime.h"

#include "agent/container-cgroup.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "agent/storage.h"
#include "common/error.h"
#include "common/files.h"
#include "common/log.h"
#include "common/subprocess.h"
#include "common/syscall.h"
#include "net/data-listener.h"

namespace migrate {

using nlohmann::json;

void checkLazyPagesSupported() {
  constexpr uint64_t kCriuPagePipeBytes = 4 << 20;  // PIPE_MAX_SIZE pages in criu/page-pipe.h
  auto text = readFileIfExists("/proc/sys/fs/pipe-max-size");
  uint64_t max = text ? std::stoull(*text) : 0;
  if (max >= kCriuPagePipeBytes) return;
  fail(ErrorKind::Unimplemented, "post-copy needs fs.pipe-max-size >= " + std::to_string(kCriuPagePipeBytes) +
                                   " on this host (it is " + std::to_string(max) +
                                   "; CRIU's page server cannot size its pipe otherwise): "
                                   "sysctl -w fs.pipe-max-size=" + std::to_string(kCriuPagePipeBytes));
}

void checkLazyRestoreSupported() {
  auto text = readFileIfExists("/proc/sys/vm/unprivileged_userfaultfd");
  if (text && std::stoi(*text) == 1) return;
  fail(ErrorKind::Unimplemented,
       "post-copy of a container in a user namespace needs vm.unprivileged_userfaultfd=1 on this host (it is " +
           (text ? std::to_string(std::stoi(*text)) : std::string("unknown")) +
           "; CRIU's restored tasks open their userfaultfd from inside the namespace, without CAP_SYS_PTRACE): "
           "sysctl -w vm.unprivileged_userfaultfd=1, or migrate it without --postcopy");
}

std::string logTail(const fs::path& file, size_t lines) {
  auto content = readFileTailIfExists(file, kLogTailBytes);
  if (!content || content->empty()) return "";
  size_t pos = content->size();
  if ((*content)[pos - 1] == '\n') --pos;
  for (size_t n = 0; n < lines && pos > 0; ++n) {
    auto nl = content->rfind('\n', pos - 1);
    pos = nl == std::string::npos ? 0 : nl;
  }
  return content->substr(pos == 0 ? 0 : pos + 1);
}

std::chrono::seconds restoreDeadline(uint64_t imageBytes) {
  constexpr uint64_t kGiB = 1ull << 30;
  return std::chrono::seconds(30 + 10 * ((imageBytes + kGiB - 1) / kGiB));
}

namespace {

bool isAgentCgroup(const std::string& cgroupsPath) {
  fs::path path(cgroupsPath);
  if (cgroupsPath.rfind("/migrate/", 0) != 0) return false;
  int components = 0;
  for (auto& part : path.relative_path()) {
    if (part == ".." || part == ".") return false;
    ++components;
  }
  return components >= 3;  // migrate/<host>/<id>
}

// Keeps the last kLogTailBytes of a log nobody writes to any more.
void cutLogToTail(const fs::path& log) {
  struct stat st;
  if (::stat(log.c_str(), &st) != 0 || static_cast<uint64_t>(st.st_size) <= kLogTailBytes) return;
  auto tail = readFileTailIfExists(log, kLogTailBytes).value_or("");
  writeFileAtomic(log, "[migrate-agent: cut from " + std::to_string(st.st_size) + " bytes to its last " +
                           std::to_string(tail.size()) + "]\n" + tail, 0600);
}

}  // namespace

Runtime::Runtime(RuntimeOptions options) : options_(std::move(options)) {
  fs::create_directories(options_.runcRoot);
}

std::string Runtime::runcCommand(const std::vector<std::string>& args) {
  std::vector<std::string> full = {options_.runc, "--root", options_.runcRoot.string()};
  full.insert(full.end(), args.begin(), args.end());
  return run(full);
}

pid_t Runtime::runConmon(const std::string& id, const ContainerPaths& paths,
                         const std::optional<RestoreOptions>& restore) {
  for (auto& dir : {paths.exitDir(), paths.socketDir()}) fs::create_directories(dir);
  fs::remove(paths.exitDir() / id);
  fs::remove(paths.pidFile());
  fs::remove(paths.conmonPidFile());  // killRestore trusts only one this conmon wrote
  // conmon reports the container's pid, or runc's error, as JSON on the sync
  // pipe (_OCI_SYNCPIPE); its parent process exits as soon as the monitor has
  // daemonized, before runc is done, so the pipe is what we wait on.
  int sync[2];
  SYSCALL(::pipe2(sync, O_CLOEXEC), "pipe2");
  Fd syncRead(sync[0]), syncWrite(sync[1]);

  SubprocessOptions conmon;
  conmon.args = {options_.conmon,
                 "--api-version", "1",
                 "-c", id, "-u", id, "-n", id,
                 "-r", options_.runc,
                 "-b", paths.bundle().string(),
                 "-p", paths.pidFile().string(),
                 "-P", paths.conmonPidFile().string(),
                 "-l", "k8s-file:" + paths.log().string(),
                 "--exit-dir", paths.exitDir().string(),
                 "--socket-dir-path", paths.socketDir().string(),
                 "--runtime-arg", "--root=" + options_.runcRoot.string(),
                 "--runtime-arg", "--log=" + paths.runcLog().string()};
  if (restore) {
    fs::create_directories(paths.criuWork());
    conmon.args.insert(conmon.args.end(), {"--restore", paths.checkpoint().string(),
                                           "--runtime-opt", "--work-path=" + paths.criuWork().string()});
    if (restore->tcpEstablished) conmon.args.insert(conmon.args.end(), {"--runtime-opt", "--tcp-established"});
    if (restore->lazyPages) conmon.args.insert(conmon.args.end(), {"--runtime-opt", "--lazy-pages"});
  }
  conmon.env = {{"_OCI_SYNCPIPE", "3"}};
  conmon.passFds = {syncWrite.get()};
  conmon.newSession = true;  // the monitor must not die with the agent's process group
  Subprocess child(conmon);
  pid_t conmonGroup = child.pid();  // its own session and process group; runc and CRIU join it
  int status = child.wait();
  syncWrite.reset();
  if (status != 0) fail("conmon for `" + id + "` exited with status " + std::to_string(status));

  std::string reply = awaitConmonReply(syncRead.get(), id, paths, restore, conmonGroup);
  const char* what = restore ? "runc restore" : "runc create";
  json message;
  try {
    message = json::parse(reply.substr(0, reply.find('\n')));
  } catch (const json::exception&) {
    fail(what + std::string(" of `") + id + "`: conmon said nothing usable (" + reply + ")\n" + logTail(paths.runcLog()));
  }
  int pid = message.value("data", -1);
  if (pid <= 0) {
    std::string detail = message.value("message", "");
    if (restore) detail += "\n" + logTail(paths.criuWork() / "restore.log");
    else detail += "\n" + logTail(paths.runcLog());
    fail(what + std::string(" of `") + id + "` failed: " + detail);
  }
  return pid;
}

std::string Runtime::awaitConmonReply(int syncFd, const std::string& id, const ContainerPaths& paths,
                                      const std::optional<RestoreOptions>& restore, pid_t conmonGroup) {
  using Clock = std::chrono::steady_clock;
  std::chrono::seconds timeout{0};
  if (restore) {
    timeout = options_.restoreTimeout.count() > 0 ? options_.restoreTimeout : restoreDeadline(treeSize(paths.checkpoint()));
  }
  auto deadline = Clock::now() + timeout;
  fs::path log = paths.criuWork() / "restore.log";
  std::string reply;
  char buf[4096];
  for (;;) {
    pollfd p = {syncFd, POLLIN, 0};
    // A restore is watched four times a second: its deadline, its log's size.
    int ready = ::poll(&p, 1, restore ? 250 : -1);
    if (ready < 0 && errno == EINTR) continue;
    if (ready < 0) failErrno(errno, "poll conmon sync pipe");
    if (ready > 0) {
      auto n = SYSCALL(::read(syncFd, buf, sizeof buf), "read conmon sync pipe");
      if (n == 0) break;
      reply.append(buf, static_cast<size_t>(n));
      if (reply.find('\n') != std::string::npos || reply.size() > kLogTailBytes) break;
      continue;
    }
    std::string why;
    struct stat st;
    if (Clock::now() >= deadline) {
      why = "did not finish within " + std::to_string(timeout.count()) + " s (the restore timeout, --restore-timeout)";
    } else if (::stat(log.c_str(), &st) == 0 && static_cast<uint64_t>(st.st_size) > options_.criuLogMaxBytes) {
      why = "wrote more than " + std::to_string(options_.criuLogMaxBytes) + " bytes of restore.log (--criu-log-max-bytes)";
    }
    if (why.empty()) continue;
    killRestore(id, paths, *restore, conmonGroup);
    cutLogToTail(log);
    fail("restore of `" + id + "` " + why + ": CRIU, runc and conmon were killed (" + log.string() + "):\n" +
         logTail(log));
  }
  return reply;
}

// conmon, `runc restore` and its `criu swrk` child share conmon's process
// group; runc moves CRIU into the container's cgroup before the restore
// (libcontainer criuApplyCgroups), so CRIU's restored tasks, whose restorer
// is what loops on a bad image, are born there and are killed there.
void Runtime::killRestore(const std::string& id, const ContainerPaths& paths, const RestoreOptions& restore,
                          pid_t conmonGroup) {
  std::vector<pid_t> groups = {conmonGroup};
  if (auto text = readFileIfExists(paths.conmonPidFile())) {
    long pid = std::strtol(text->c_str(), nullptr, 10);
    // Still that conmon, not a process that got its pid since.
    auto cmdline = readFileTailIfExists("/proc/" + std::to_string(pid) + "/cmdline", 1 << 16).value_or("");
    if (pid > 1 && cmdline.find(id) != std::string::npos) {
      groups.push_back(::getpgid(static_cast<pid_t>(pid)));
      ::kill(static_cast<pid_t>(pid), SIGKILL);
    }
  }
  for (pid_t group : groups) {
    if (group > 1 && group != ::getpgrp()) ::kill(-group, SIGKILL);
  }
  if (isAgentCgroup(restore.cgroupsPath)) {
    auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    for (;;) {
      auto pids = cgroupMembers(restore.cgroupsPath);
      if (pids.empty()) break;
      for (pid_t pid : pids) ::kill(pid, SIGKILL);
      if (std::chrono::steady_clock::now() > until) {
        logError("restore: " + std::to_string(pids.size()) + " process(es) still in " + restore.cgroupsPath +
                 " after SIGKILL");
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    // runc never recorded the container, so `runc delete` will not remove them.
    for (auto& dir : cgroupDirs(restore.cgroupsPath)) ::rmdir(dir.c_str());
  } else {
    logWarn("restore: no cgroup of ours to clear (`" + restore.cgroupsPath + "`)");
  }
  // What CRIU and runc would have unmounted had they finished: CRIU's
  // cgroup yard in its work dir, runc's criu-root overlay.
  unmountAllUnder(paths.criuWork());
  unmountAllUnder(options_.runcRoot / id);
  // runc's state for an id it never finished restoring ("container with given
  // ID already exists" on the next try), which `runc delete` cannot read.
  if (!fs::exists(options_.runcRoot / id / "state.json")) removeTree(options_.runcRoot / id);
}

pid_t Runtime::create(const std::string& id, const ContainerPaths& paths) {
  ErrorContext context("runtime");
  return runConmon(id, paths, std::nullopt);
}

void Runtime::start(const std::string& id) { runcCommand({"start", id}); }

std::optional<RuntimeState> Runtime::stateIfExists(const std::string& id) {
  auto result = runCapture(SubprocessOptions::of({options_.runc, "--root", options_.runcRoot.string(), "state", id}));
  if (result.status != 0) return std::nullopt;
  try {
    auto j = json::parse(result.out);
    return RuntimeState{j.at("status").get<std::string>(), j.value("pid", 0)};
  } catch (const json::exception& e) {
    fail("runc state `" + id + "`: " + e.what());
  }
}

void Runtime::kill(const std::string& id, int signal) {
  runcCommand({"kill", id, std::to_string(signal)});
}

void Runtime::remove(const std::string& id) {
  if (!stateIfExists(id)) return;
  runcCommand({"delete", "--force", id});
}

void Runtime::checkpoint(const std::string& id, const ContainerPaths& paths, const CheckpointOptions& options) {
  // The image directory is the caller's to prepare (it may be a tmpfs).
  removeTree(paths.criuWork());
  fs::create_directories(paths.checkpoint());
  fs::create_directories(paths.criuWork());
  std::vector<std::string> args = {options_.runc, "--root", options_.runcRoot.string(), "checkpoint",
                                   "--image-path", paths.checkpoint().string(),
                                   "--work-path", paths.criuWork().string()};
  if (options.tcpEstablished) args.push_back("--tcp-established");
  if (options.leaveRunning) args.push_back("--leave-running");
  args.push_back(id);
  auto result = runCapture(SubprocessOptions::of(args));
  if (result.status != 0) {
    fail("criu: checkpoint of `" + id + "` failed (" + (paths.criuWork() / "dump.log").string() + "): " +
         result.err + "\n" + logTail(paths.criuWork() / "dump.log"));
  }
}

LazyDump Runtime::startLazyCheckpoint(const std::string& id, const ContainerPaths& paths,
                                      const CheckpointOptions& options, uint16_t port) {
  removeTree(paths.criuWork());
  fs::create_directories(paths.checkpoint());
  fs::create_directories(paths.criuWork());
  int status[2];
  SYSCALL(::pipe2(status, O_CLOEXEC), "pipe2");
  Fd statusRead(status[0]), statusWrite(status[1]);
  Fd errors(SYSCALL(::open((paths.criuWork() / "runc-checkpoint.err").c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
                           0600), "open", (paths.criuWork() / "runc-checkpoint.err").string()));
  std::vector<std::string> args = {options_.runc, "--root", options_.runcRoot.string(), "checkpoint",
                                   "--lazy-pages", "--page-server", "127.0.0.1:" + std::to_string(port),
                                   "--status-fd", "3",
                                   "--image-path", paths.checkpoint().string(),
                                   "--work-path", paths.criuWork().string()};
  if (options.tcpEstablished) args.push_back("--tcp-established");
  args.push_back(id);
  auto spawn = SubprocessOptions::of(args);
  spawn.passFds = {statusWrite.get()};
  spawn.stdoutFd = errors.get();
  spawn.stderrFd = errors.get();
  LazyDump dump{Subprocess(spawn), port};
  statusWrite.reset();
  // CRIU writes one byte once the images are out and the page server
  // listens; end of file instead means it failed.
  char ready = 1;
  ssize_t n;
  do n = ::read(statusRead.get(), &ready, 1);
  while (n < 0 && errno == EINTR);
  if (n != 1) {
    int code = dump.runc.wait();
    fail("criu: lazy checkpoint of `" + id + "` failed (runc exit " + std::to_string(code) + "): " +
         readFileTailIfExists(paths.criuWork() / "runc-checkpoint.err", kLogTailBytes).value_or("") + "\n" +
         logTail(paths.criuWork() / "dump.log"));
  }
  return dump;
}

void Runtime::abortLazyCheckpoint(LazyDump& dump, Fd connection) {
  Fd sock = connection ? std::move(connection)
                      : connectTcp("127.0.0.1", dump.pageServerPort, std::chrono::seconds(5));
  char garbage[64];
  std::memset(garbage, 0xff, sizeof garbage);
  (void)::send(sock.get(), garbage, sizeof garbage, MSG_NOSIGNAL);
  linger reset{1, 0};
  ::setsockopt(sock.get(), SOL_SOCKET, SO_LINGER, &reset, sizeof reset);
}

void Runtime::finishLazyCheckpoint(const std::string& id, const ContainerPaths& paths, LazyDump& dump) {
  int code = dump.runc.wait();
  if (code != 0) {
    fail("criu: post-copy page transfer of `" + id + "` failed (runc exit " + std::to_string(code) + "): " +
         readFileTailIfExists(paths.criuWork() / "runc-checkpoint.err", kLogTailBytes).value_or("") + "\n" +
         logTail(paths.criuWork() / "dump.log"));
  }
}

std::vector<std::string> Runtime::lazyPagesCommand(const ContainerPaths& paths) {
  fs::create_directories(paths.criuWork());
  fs::remove(lazyPagesSocket(paths));
  return {"criu", "lazy-pages", "--page-server", "--address", "127.0.0.1", "--port", "@PORT@",
          "--images-dir", paths.checkpoint().string(), "--work-dir", paths.criuWork().string(),
          "-o", "lazy-pages.log", "-v4"};
}

fs::path Runtime::lazyPagesSocket(const ContainerPaths& paths) { return paths.criuWork() / "lazy-pages.socket"; }

pid_t Runtime::restore(const std::string& id, const ContainerPaths& paths, const RestoreOptions& options) {
  if (!fs::exists(paths.checkpoint() / "inventory.img")) {
    fail(ErrorKind::NotFound, "restore of `" + id + "`: no complete checkpoint (" +
                                  (paths.checkpoint() / "inventory.img").string() + " is missing)");
  }
  ErrorContext context("criu");
  return runConmon(id, paths, options);
}

std::string Runtime::runcVersion() {
  // "runc version 1.1.5+ds1\ncommit: ...": the version alone.
  auto out = run({options_.runc, "--version"});
  out = out.substr(0, out.find('\n'));
  auto space = out.rfind(' ');
  return space == std::string::npos ? out : out.substr(space + 1);
}

std::string Runtime::criuVersion() {
  auto out = run({"criu", "--version"});
  auto pos = out.find("Version: ");
  if (pos == std::string::npos) return out;
  auto end = out.find('\n', pos);
  return out.substr(pos + 9, end - pos - 9);
}

}  // namespace migrate
