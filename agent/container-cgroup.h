// A cgroup of the agent's — a container's as runc makes it (`/migrate/HOST/ID`,
// its cgroupsPath) or a page relay's (`/migrate-relays/HOST/MIGRATION`) — in
// whatever hierarchy this host mounts: cgroup v2 alone at /sys/fs/cgroup, or
// v1 with a directory per controller (this lab's machine: docs/environment.md).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <string>
#include <vector>

namespace migrate {

// Its directory in every mounted hierarchy (only some of them exist).
std::vector<std::filesystem::path> cgroupDirs(const std::string& cgroupsPath);
// The pids in it, in any hierarchy.
std::vector<pid_t> cgroupMembers(const std::string& cgroupsPath);
// Freezes every process in it (v2 `cgroup.freeze`, v1 freezer
// `freezer.state`); false if neither could be written.
bool freezeCgroup(const std::string& cgroupsPath);
// Whether every process in it is frozen now (v1 `FROZEN`, v2 `frozen 1`):
// writing the freeze only starts it, and a process already running goes on
// until it next enters the kernel.
bool cgroupFrozen(const std::string& cgroupsPath);

// Moves the calling process into `cgroupsPath` in every hierarchy mounted
// here that takes it, making the directories; returns how many took it (a v1
// cpuset cgroup, for one, refuses a process until its cpus are set, and is
// left out). The agent's post-copy page relays live in one of their own, so
// that nothing done to the agent's cgroup (a service manager stopping it
// with its whole control group) reaches them.
size_t joinCgroup(const std::string& cgroupsPath);
// SIGKILLs whatever still runs in it and removes its directories (the leaf
// only), trying again while the killed processes leave, for up to `wait`;
// false if one is still there then.
bool removeCgroup(const std::string& cgroupsPath, std::chrono::milliseconds wait);

}  // namespace migrate
