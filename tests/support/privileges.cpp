#include "tests/support/privileges.h"

#include <unistd.h>

#include "common/subprocess.h"

namespace migrate::test {

std::optional<std::string> missingPrivileges() {
  if (::geteuid() != 0) return "needs root (runc, CRIU, mounts)";
  for (auto tool : {"runc", "conmon", "criu"}) {
    if (runCapture(SubprocessOptions::of({"sh", "-c", std::string("command -v ") + tool})).status != 0) {
      return std::string(tool) + " is not installed (scripts/install-deps.sh)";
    }
  }
  return std::nullopt;
}

}  // namespace migrate::test
