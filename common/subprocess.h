// A child process that is killed and reaped when its owner dies, unless
// detach()ed (Sandstorm's Subprocess). run() is the common case: execute,
// capture stdout and stderr, throw with the command, exit status and stderr.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/fd.h"

namespace migrate {

struct SubprocessOptions {
  std::vector<std::string> args;                  // args[0] is the program; PATH is searched.
  std::map<std::string, std::string> env;         // Added to (or replacing in) our environment.
  std::optional<std::filesystem::path> cwd;
  // Each is either -1 (stdin: /dev/null; stdout/stderr: inherit) or a borrowed fd.
  int stdinFd = -1;
  int stdoutFd = -1;
  int stderrFd = -1;
  // Borrowed fds that the child gets as 3, 4, ... in this order.
  std::vector<int> passFds;
  bool newSession = false;  // setsid(): the child outlives our process group.

  static SubprocessOptions of(std::vector<std::string> args) {
    SubprocessOptions o;
    o.args = std::move(args);
    return o;
  }
};

class Subprocess {
 public:
  explicit Subprocess(const SubprocessOptions& options);
  Subprocess(Subprocess&& other) noexcept;
  Subprocess& operator=(Subprocess&&) = delete;
  ~Subprocess();

  pid_t pid() const { return pid_; }
  // Waits for exit; returns the exit code, or 128+signal when killed.
  int wait();
  // Returns the status if the child has exited, without blocking.
  std::optional<int> poll();
  void kill(int signal);
  void detach() { pid_ = 0; }

 private:
  pid_t pid_ = 0;
};

struct RunResult {
  int status = 0;
  std::string out;
  std::string err;
};

// Runs to completion with stdin from `input`; throws Error on exec failure.
// Does not throw on a non-zero exit: check .status.
RunResult runCapture(const SubprocessOptions& options, const std::string& input = {});

// Runs and throws Error naming the command and quoting its stderr when the
// exit status is not zero. Returns stdout.
std::string run(const std::vector<std::string>& args);
std::string run(const SubprocessOptions& options, const std::string& input = {});

// The command as a shell would show it, for messages.
std::string commandLine(const std::vector<std::string>& args);

}  // namespace migrate
