// libc lacks wrappers for these on Debian 12's glibc 2.36; one place for them (crun).
#pragma once

#include <linux/mount.h>
#include <linux/openat2.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace migrate::sys {

inline int openat2(int dirfd, const char* path, const struct open_how* how) {
  return static_cast<int>(::syscall(SYS_openat2, dirfd, path, how, sizeof(*how)));
}

inline int pidfdOpen(pid_t pid, unsigned flags = 0) {
  return static_cast<int>(::syscall(SYS_pidfd_open, pid, flags));
}

// A duplicate of `targetFd` of the process behind `pidfd` (needs ptrace access to it).
inline int pidfdGetfd(int pidfd, int targetFd, unsigned flags = 0) {
  return static_cast<int>(::syscall(SYS_pidfd_getfd, pidfd, targetFd, flags));
}

inline int pidfdSendSignal(int pidfd, int signal) {
  return static_cast<int>(::syscall(SYS_pidfd_send_signal, pidfd, signal, nullptr, 0));
}

inline int openTree(int dirfd, const char* path, unsigned flags) {
  return static_cast<int>(::syscall(SYS_open_tree, dirfd, path, flags));
}

inline int mountSetattr(int dirfd, const char* path, unsigned flags, struct mount_attr* attr) {
  return static_cast<int>(::syscall(SYS_mount_setattr, dirfd, path, flags, attr, sizeof(*attr)));
}

inline int moveMount(int fromDirfd, const char* fromPath, int toDirfd, const char* toPath, unsigned flags) {
  return static_cast<int>(::syscall(SYS_move_mount, fromDirfd, fromPath, toDirfd, toPath, flags));
}

}  // namespace migrate::sys
