// A container's cgroup as the agent makes it (`/migrate/HOST/ID`, runc's
// cgroupsPath), in whatever hierarchy this host mounts: cgroup v2 alone at
// /sys/fs/cgroup, or v1 with a directory per controller (this lab's machine:
// docs/environment.md).
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <string>
#include <vector>

namespace migrate {

// Its directory in every hierarchy (only some of them exist).
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

}  // namespace migrate
