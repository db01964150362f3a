#include "agent/criu-cpuinfo.h"

#include "common/error.h"
#include "common/files.h"
#include "common/subprocess.h"

namespace migrate {

std::string dumpCpuInfo() {
  TempDir dir("/tmp", "migrate-cpuinfo");
  run({"criu", "cpuinfo", "dump", "-D", dir.path().string()});
  return readFile(dir.path() / "cpuinfo.img");
}

void checkCpuInfoCompatible(const std::string& cpuInfoImage) {
  TempDir dir("/tmp", "migrate-cpuinfo");
  writeFileAtomic(dir.path() / "cpuinfo.img", cpuInfoImage);
  auto r = runCapture(SubprocessOptions::of({"criu", "cpuinfo", "check", "-D", dir.path().string(), "-v2"}));
  if (r.status != 0) {
    fail(ErrorKind::Conflict, "criu cpuinfo check: this CPU cannot run what the source dumped: " + r.err + r.out);
  }
}

}  // namespace migrate
