// A container's processes, found through /proc by the pid namespace of its init.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <string>

namespace migrate {

// Every process in the pid namespace of `init` (a container's init), by pid;
// none when `init` is gone.
void forEachProcessInPidNamespace(pid_t init, const std::function<void(const std::string& pid)>& visit);

// Memory the processes hold (anonymous + shared, resident): how much a
// post-copy has to move. 0 when `init` is not a pid.
uint64_t residentBytes(pid_t init);

}  // namespace migrate
