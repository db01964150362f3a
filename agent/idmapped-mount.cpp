#include "agent/idmapped-mount.h"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/wait.h>

#include "agent/storage.h"
#include "common/error.h"
#include "common/files.h"
#include "common/syscall.h"
#include "common/syscalls.h"

namespace migrate {

Fd makeUserNamespace(const IdMapping& mapping) {
  // unshare(CLONE_NEWUSER) is refused to a multithreaded process: a forked
  // child (one thread) makes the namespace and waits, while we write its maps
  // and open it. The child only calls async-signal-safe functions.
  int ready[2], done[2];
  SYSCALL(::pipe2(ready, O_CLOEXEC), "pipe2");
  Fd readyRead(ready[0]), readyWrite(ready[1]);
  SYSCALL(::pipe2(done, O_CLOEXEC), "pipe2");
  Fd doneRead(done[0]), doneWrite(done[1]);
  pid_t child = SYSCALL(::fork(), "fork");
  if (child == 0) {
    ::close(readyRead.get());
    ::close(doneWrite.get());
    char status = ::unshare(CLONE_NEWUSER) == 0 ? 'y' : 'n';
    if (::write(readyWrite.get(), &status, 1) != 1) ::_exit(1);
    char byte;
    (void)!::read(doneRead.get(), &byte, 1);  // until the parent closes its end (or kills it)
    ::_exit(0);
  }
  readyWrite.reset();
  doneRead.reset();
  struct Reaper {
    pid_t pid;
    ~Reaper() {
      ::kill(pid, SIGKILL);
      while (::waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
      }
    }
  } reaper{child};
  char status = 0;
  if (::read(readyRead.get(), &status, 1) != 1 || status != 'y') fail("user namespace for " + mapping.text() + ": unshare failed");
  std::string proc = "/proc/" + std::to_string(child);
  std::string line = "0 " + std::to_string(mapping.hostId) + " " + std::to_string(mapping.size) + "\n";
  for (auto map : {"/uid_map", "/gid_map"}) {
    Fd f(SYSCALL(::open((proc + map).c_str(), O_WRONLY | O_CLOEXEC), "open", proc + map));
    SYSCALL(::write(f.get(), line.data(), line.size()), "write", proc + map, line);
  }
  return Fd(SYSCALL(::open((proc + "/ns/user").c_str(), O_RDONLY | O_CLOEXEC), "open", proc + "/ns/user"));
}

void mountIdmapped(const fs::path& source, const fs::path& target, const IdMapping& mapping) {
  ErrorContext context("idmapped mount of " + source.string() + " (" + mapping.text() + ") at " + target.string());
  fs::create_directories(target);
  if (isMountPoint(target)) return;
  Fd userns = makeUserNamespace(mapping);
  Fd tree(SYSCALL(sys::openTree(AT_FDCWD, source.c_str(), OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC), "open_tree"));
  struct mount_attr attr = {};
  // Read-only: overlayfs never writes its lower layer, and this one is the
  // image every container of it shares.
  attr.attr_set = MOUNT_ATTR_IDMAP | MOUNT_ATTR_RDONLY;
  attr.userns_fd = static_cast<uint64_t>(userns.get());
  SYSCALL(sys::mountSetattr(tree.get(), "", AT_EMPTY_PATH, &attr), "mount_setattr MOUNT_ATTR_IDMAP");
  SYSCALL(sys::moveMount(tree.get(), "", AT_FDCWD, target.c_str(), MOVE_MOUNT_F_EMPTY_PATH), "move_mount");
}

}  // namespace migrate
