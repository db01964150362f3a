#include "agent/container-processes.h"

#include <filesystem>
#include <sstream>
#include <system_error>

#include "common/files.h"

namespace migrate {

namespace fs = std::filesystem;

void forEachProcessInPidNamespace(pid_t pid, const std::function<void(const std::string& pid)>& visit) {
  auto pidNs = [](const std::string& p) {
    std::error_code ec;
    auto target = fs::read_symlink("/proc/" + p + "/ns/pid", ec);
    return ec ? std::string() : target.string();
  };
  std::string containerNs = pidNs(std::to_string(pid));
  if (containerNs.empty()) return;
  for (auto& entry : fs::directory_iterator("/proc")) {
    std::string p = entry.path().filename();
    if (p.find_first_not_of("0123456789") == std::string::npos && pidNs(p) == containerNs) visit(p);
  }
}

uint64_t residentBytes(pid_t init) {
  uint64_t total = 0;
  if (init <= 0) return 0;
  forEachProcessInPidNamespace(init, [&](const std::string& pid) {
    std::istringstream status(readFileIfExists("/proc/" + pid + "/status").value_or(""));
    std::string key;
    uint64_t kib = 0;
    while (status >> key) {
      if ((key == "RssAnon:" || key == "RssShmem:") && status >> kib) total += kib << 10;
    }
  });
  return total;
}

}  // namespace migrate
