// Persistent network namespaces, as `ip netns add` makes them: a fresh netns
// kept alive by a bind mount of its nsfs file on an ordinary file, so it
// outlives the process that made it and can be named by path (CNI_NETNS, the
// OCI spec's namespace path, nsenter --net=).
#pragma once

#include <filesystem>
#include <functional>
#include <string>
#include <vector>

namespace migrate {

namespace fs = std::filesystem;

// Creates `path` (its parent must exist) and binds a new network namespace on
// it, with loopback up: runc brings lo up only in namespaces it creates
// itself, and a CNI conflist need not carry the loopback plugin.
// Conflict if `path` exists. The calling thread's own netns is untouched.
void createNetns(const fs::path& path);

// Binds the existing netns `source` (e.g. /proc/<pid>/ns/net of a process
// runc made it for) on `path`, as createNetns would a new one, with loopback
// up (CRIU's empty netns at restore has it down). Conflict if `path` exists.
void pinNetns(const fs::path& source, const fs::path& path);

// Detaches the bind mount and unlinks the file. No-op if absent. The netns
// itself dies when its last user (process, open fd, other mount) goes.
void removeNetns(const fs::path& path);

// True if `path` is a bound network namespace (not merely a file).
bool netnsExists(const fs::path& path);

// Runs `fn` with the netns switched to `path`, on a dedicated thread (setns
// changes only the calling thread; a fresh thread leaves ours alone whatever
// `fn` does). Child processes forked inside `fn` (Subprocess, run()) start in
// that netns. Rethrows what `fn` throws. ErrorContext frames of the caller do
// not reach throws inside `fn` (they are per thread); the caller's apply to
// what it rethrows only if it catches and re-fails.
void runInNetns(const fs::path& path, const std::function<void()>& fn);

// The prefix that makes a command line run in `path`'s netns, for processes
// that must outlive us or be started by others: {"nsenter", "--net=<path>", "--"}.
// Only the network namespace changes (not the mount namespace, unlike `ip netns exec`).
std::vector<std::string> netnsCommandPrefix(const fs::path& path);

// RAII: a netns made by createNetns and removed when the guard dies, unless released.
class NetnsGuard {
 public:
  explicit NetnsGuard(fs::path path);  // Calls createNetns(path).
  NetnsGuard(NetnsGuard&& other) noexcept;
  NetnsGuard& operator=(NetnsGuard&&) = delete;
  ~NetnsGuard();
  const fs::path& path() const { return path_; }
  fs::path release();  // Keeps the netns; returns its path.

 private:
  fs::path path_;
};

}  // namespace migrate
