#include "agent/criu-network-lock.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "agent/container-processes.h"
#include "common/fd.h"
#include "common/log.h"
#include "common/syscalls.h"
#include "net/netns-lock.h"

namespace migrate {

namespace fs = std::filesystem;

void undoCriuNetworkLock(const Container& c) {
  if (!c.state.netns.empty()) removeCriuLockTables(c.state.netns);
  if (c.state.pid <= 0) return;
  int sockets = 0, repaired = 0;
  std::string errors;
  forEachProcessInPidNamespace(c.state.pid, [&](const std::string& pid) {
    Fd pidfd(sys::pidfdOpen(std::stoi(pid)));
    if (!pidfd) return;
    std::error_code ec;
    for (auto& fdEntry : fs::directory_iterator("/proc/" + pid + "/fd", ec)) {
      auto link = fs::read_symlink(fdEntry.path(), ec);
      if (ec || link.string().rfind("socket:", 0) != 0) continue;
      ++sockets;
      Fd sock(sys::pidfdGetfd(pidfd.get(), std::stoi(fdEntry.path().filename())));
      if (!sock) {
        errors += std::string(" pidfd_getfd: ") + strerror(errno) + ";";
        continue;
      }
      int off = 0;  // TCP_REPAIR_OFF
      // EPERM: not a connected TCP socket (a listener, UDP, unix), so never in repair.
      if (::setsockopt(sock.get(), IPPROTO_TCP, TCP_REPAIR, &off, sizeof off) == 0) ++repaired;
      else if (errno != EPERM && errno != EOPNOTSUPP) errors += " " + link.string() + ": " + strerror(errno) + ";";
    }
  });
  logInfo("`" + c.config.name + "`: CRIU's network lock removed (" + std::to_string(repaired) + " of " +
          std::to_string(sockets) + " socket(s) were TCP connections, out of repair now" +
          (errors.empty() ? "" : ";" + errors) + ")");
}

}  // namespace migrate
