// The CPU features CRIU recorded on one host, checked on another before a
// migration freezes anything: a target whose CPU lacks what the source's
// processes use would fail their restore (or worse, run them and fault).
#pragma once

#include <string>

namespace migrate {

// `criu cpuinfo dump` of this host: the cpuinfo.img bytes.
std::string dumpCpuInfo();
// Conflict, with CRIU's reason, if this CPU cannot run what a host with
// `cpuInfoImage` dumped (`criu cpuinfo check`).
void checkCpuInfoCompatible(const std::string& cpuInfoImage);

}  // namespace migrate
