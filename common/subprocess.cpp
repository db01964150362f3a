#include "common/subprocess.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>

#include "common/error.h"
#include "common/syscall.h"

extern char** environ;

namespace migrate {

namespace {

int decodeStatus(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 255;
}

[[noreturn]] void childFail(int errPipe, const char* what) {
  int err = errno;
  (void)!::write(errPipe, &err, sizeof err);
  (void)!::write(errPipe, what, std::strlen(what));
  ::_exit(127);
}

}  // namespace

std::string commandLine(const std::vector<std::string>& args) {
  std::string s;
  for (auto& a : args) {
    if (!s.empty()) s += ' ';
    bool plain = !a.empty() && a.find_first_of(" \t'\"$\\*?;&|<>()") == std::string::npos;
    s += plain ? a : "'" + a + "'";
  }
  return s;
}

Subprocess::Subprocess(const SubprocessOptions& options) {
  if (options.args.empty()) fail(ErrorKind::InvalidInput, "subprocess: empty command");

  // Everything the child needs is built before fork: no allocation after it.
  std::vector<std::string> envStrings;
  for (char** e = environ; *e; ++e) {
    std::string entry(*e);
    auto eq = entry.find('=');
    if (eq != std::string::npos && options.env.count(entry.substr(0, eq))) continue;
    envStrings.push_back(std::move(entry));
  }
  for (auto& [k, v] : options.env) envStrings.push_back(k + "=" + v);
  std::vector<char*> envp, argv;
  for (auto& s : envStrings) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::vector<std::string> argsCopy = options.args;
  for (auto& s : argsCopy) argv.push_back(s.data());
  argv.push_back(nullptr);
  std::string cwd = options.cwd ? options.cwd->string() : std::string();

  int errPipe[2];
  SYSCALL(::pipe2(errPipe, O_CLOEXEC), "pipe2");
  Fd errRead(errPipe[0]), errWrite(errPipe[1]);

  pid_t pid = SYSCALL(::fork(), "fork");
  if (pid == 0) {
    // Child: place fds, then exec. Pass-through fds are first moved above the
    // highest target so that dup2 onto 0..N cannot clobber a source.
    sigset_t all;
    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, nullptr);
    signal(SIGPIPE, SIG_DFL);
    if (options.newSession) ::setsid();
    const int high = 100;
    int report = ::fcntl(errWrite.get(), F_DUPFD_CLOEXEC, high);
    if (report < 0) ::_exit(127);
    std::vector<int> sources = {options.stdinFd, options.stdoutFd, options.stderrFd};
    for (int fd : options.passFds) sources.push_back(fd);
    std::vector<int> moved(sources.size(), -1);
    for (size_t i = 0; i < sources.size(); ++i) {
      if (sources[i] < 0) continue;
      moved[i] = ::fcntl(sources[i], F_DUPFD, high);
      if (moved[i] < 0) childFail(report, "dup");
    }
    if (moved[0] < 0) {
      int null = ::open("/dev/null", O_RDONLY);
      if (null < 0) childFail(report, "open /dev/null");
      moved[0] = ::fcntl(null, F_DUPFD, high);
      ::close(null);
    }
    for (size_t i = 0; i < moved.size(); ++i) {
      if (moved[i] < 0) continue;
      if (::dup2(moved[i], static_cast<int>(i)) < 0) childFail(report, "dup2");
      ::close(moved[i]);
    }
    // Keep the error pipe just above the placed fds and close everything else.
    int firstFree = static_cast<int>(moved.size());
    if (::dup3(report, firstFree, O_CLOEXEC) < 0) ::_exit(127);
    report = firstFree;
    ::close_range(static_cast<unsigned>(firstFree + 1), ~0U, 0);
    if (!cwd.empty() && ::chdir(cwd.c_str()) < 0) childFail(report, "chdir");
    ::execvpe(argv[0], argv.data(), envp.data());
    childFail(report, "exec");
  }
  pid_ = pid;
  errWrite.reset();
  // The child's error pipe closes on exec (O_CLOEXEC) with nothing written;
  // before that, a failing step writes errno and its name.
  int err = 0;
  auto n = ::read(errRead.get(), &err, sizeof err);
  if (n == static_cast<ssize_t>(sizeof err)) {
    char what[64] = {};
    (void)!::read(errRead.get(), what, sizeof what - 1);
    wait();
    pid_ = 0;
    errno = err;
    failErrno(err, std::string(what) + " " + commandLine(options.args));
  }
}

Subprocess::Subprocess(Subprocess&& other) noexcept : pid_(std::exchange(other.pid_, 0)) {}

Subprocess::~Subprocess() {
  if (pid_ > 0) {
    ::kill(pid_, SIGKILL);
    int status;
    while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
  }
}

int Subprocess::wait() {
  if (pid_ <= 0) fail("subprocess: wait on a detached or reaped child");
  int status = 0;
  SYSCALL(::waitpid(pid_, &status, 0), "waitpid");
  pid_ = 0;
  return decodeStatus(status);
}

std::optional<int> Subprocess::poll() {
  if (pid_ <= 0) fail("subprocess: poll on a detached or reaped child");
  int status = 0;
  pid_t r = SYSCALL(::waitpid(pid_, &status, WNOHANG), "waitpid");
  if (r == 0) return std::nullopt;
  pid_ = 0;
  return decodeStatus(status);
}

void Subprocess::kill(int signal) {
  if (pid_ > 0) ::kill(pid_, signal);
}

RunResult runCapture(const SubprocessOptions& options, const std::string& input) {
  int inPipe[2], outPipe[2], errPipe[2];
  SYSCALL(::pipe2(inPipe, O_CLOEXEC), "pipe2");
  Fd inRead(inPipe[0]), inWrite(inPipe[1]);
  SYSCALL(::pipe2(outPipe, O_CLOEXEC), "pipe2");
  Fd outRead(outPipe[0]), outWrite(outPipe[1]);
  SYSCALL(::pipe2(errPipe, O_CLOEXEC), "pipe2");
  Fd errRead(errPipe[0]), errWrite(errPipe[1]);

  SubprocessOptions opts = options;
  opts.stdinFd = inRead.get();
  opts.stdoutFd = outWrite.get();
  opts.stderrFd = errWrite.get();
  Subprocess child(opts);
  inRead.reset();
  outWrite.reset();
  errWrite.reset();

  // Feed stdin and drain both outputs together so no pipe fills up and blocks.
  RunResult result;
  size_t written = 0;
  if (input.empty()) inWrite.reset();
  ::fcntl(inWrite.get(), F_SETFL, O_NONBLOCK);
  while (outRead || errRead) {
    std::vector<pollfd> fds;
    if (inWrite) fds.push_back({inWrite.get(), POLLOUT, 0});
    if (outRead) fds.push_back({outRead.get(), POLLIN, 0});
    if (errRead) fds.push_back({errRead.get(), POLLIN, 0});
    SYSCALL(::poll(fds.data(), fds.size(), -1), "poll");
    for (auto& p : fds) {
      if (!p.revents) continue;
      if (inWrite && p.fd == inWrite.get()) {
        auto n = ::write(p.fd, input.data() + written, input.size() - written);
        if (n > 0) written += static_cast<size_t>(n);
        if (n < 0 && errno != EAGAIN && errno != EINTR) written = input.size();  // EPIPE: child stopped reading.
        if (written == input.size()) inWrite.reset();
        continue;
      }
      char buf[65536];
      auto n = ::read(p.fd, buf, sizeof buf);
      if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      bool isOut = outRead && p.fd == outRead.get();
      if (n <= 0) {
        (isOut ? outRead : errRead).reset();
      } else {
        (isOut ? result.out : result.err).append(buf, static_cast<size_t>(n));
      }
    }
  }
  inWrite.reset();
  result.status = child.wait();
  return result;
}

std::string run(const SubprocessOptions& options, const std::string& input) {
  auto result = runCapture(options, input);
  if (result.status != 0) {
    std::string err = result.err.empty() ? result.out : result.err;
    while (!err.empty() && (err.back() == '\n' || err.back() == ' ')) err.pop_back();
    fail(commandLine(options.args) + " exited with status " + std::to_string(result.status) +
         (err.empty() ? "" : ": " + err));
  }
  return result.out;
}

std::string run(const std::vector<std::string>& args) {
  SubprocessOptions options;
  options.args = args;
  return run(options);
}

}  // namespace migrate
