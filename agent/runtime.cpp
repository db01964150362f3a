#include "agent/runtime.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <thread>

#include <nlohmann/json.hpp>

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

std::string logTail(const fs::path& file, size_t lines) {
  auto content = readFileIfExists(file);
  if (!content || content->empty()) return "";
  size_t pos = content->size();
  if ((*content)[pos - 1] == '\n') --pos;
  for (size_t n = 0; n < lines && pos > 0; ++n) {
    auto nl = content->rfind('\n', pos - 1);
    pos = nl == std::string::npos ? 0 : nl;
  }
  return content->substr(pos == 0 ? 0 : pos + 1);
}

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
  int status = child.wait();
  syncWrite.reset();
  if (status != 0) fail("conmon for `" + id + "` exited with status " + std::to_string(status));

  std::string reply;
  char buf[4096];
  for (;;) {
    auto n = SYSCALL(::read(syncRead.get(), buf, sizeof buf), "read conmon sync pipe");
    if (n == 0) break;
    reply.append(buf, static_cast<size_t>(n));
    if (reply.find('\n') != std::string::npos) break;
  }
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
         readFileIfExists(paths.criuWork() / "runc-checkpoint.err").value_or("") + "\n" +
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
         readFileIfExists(paths.criuWork() / "runc-checkpoint.err").value_or("") + "\n" +
         logTail(paths.criuWork() / "dump.log"));
  }
}

Subprocess Runtime::startLazyPages(const ContainerPaths& paths, uint16_t port) {
  fs::create_directories(paths.criuWork());
  fs::path socket = paths.criuWork() / "lazy-pages.socket";
  fs::remove(socket);
  Subprocess daemon(SubprocessOptions::of({"criu", "lazy-pages", "--page-server", "--address", "127.0.0.1",
                                           "--port", std::to_string(port),
                                           "--images-dir", paths.checkpoint().string(),
                                           "--work-dir", paths.criuWork().string(),
                                           "-o", "lazy-pages.log", "-v4"}));
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!fs::exists(socket)) {
    if (auto code = daemon.poll()) {
      fail("criu lazy-pages exited with status " + std::to_string(*code) + ":\n" +
           logTail(paths.criuWork() / "lazy-pages.log"));
    }
    if (std::chrono::steady_clock::now() > deadline) {
      fail("criu lazy-pages did not open " + socket.string() + " within 10 s:\n" +
           logTail(paths.criuWork() / "lazy-pages.log"));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return daemon;
}

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
