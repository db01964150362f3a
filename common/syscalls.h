// libc lacks wrappers for these on Debian 12's glibc 2.36; one place for them (crun).
#pragma once

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

}  // namespace migrate::sys
