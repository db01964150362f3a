#include "net/tls-pump.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "common/error.h"
#include "common/syscall.h"

namespace migrate {

namespace {

[[noreturn]] void failSocket(const char* what) {
  int e = errno;
  fail(e == EPIPE || e == ECONNRESET ? ErrorKind::Disconnected : ErrorKind::Failed,
       std::string("pump: ") + what + " local socket: " + strerror(e));
}

bool readable(short revents) { return (revents & (POLLIN | POLLHUP | POLLERR)) != 0; }

}  // namespace

void pumpTls(TlsStream& tls, int socketFd, const std::atomic<bool>& stop, PumpCounters* counters,
             const std::function<bool()>& socketEofIsClean) {
  // Request/response traffic (a page request, its pages): Nagle's delay on
  // either hop would stall every round trip.
  int one = 1;
  ::setsockopt(tls.fd(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  ::setsockopt(socketFd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);  // fails harmlessly on a unix socket
  std::vector<char> buffer(1 << 16);
  bool socketOpen = true;  // still reading the socket
  bool tlsOpen = true;     // still reading TLS
  while ((socketOpen || tlsOpen) && !stop) {
    // A record TLS already decrypted does not show in poll().
    bool tlsReady = tlsOpen && tls.pending() > 0;
    bool socketReady = false;
    if (!tlsReady) {
      pollfd fds[2] = {{tlsOpen ? tls.fd() : -1, POLLIN, 0}, {socketOpen ? socketFd : -1, POLLIN, 0}};
      int ready = ::poll(fds, 2, 200);  // wakes up now and then to see `stop`
      if (ready < 0 && errno == EINTR) continue;
      SYSCALL(ready, "poll");
      tlsReady = tlsOpen && readable(fds[0].revents);
      socketReady = socketOpen && readable(fds[1].revents);
    }
    if (socketReady) {
      ssize_t n = ::read(socketFd, buffer.data(), buffer.size());
      if (n < 0 && errno != EINTR && errno != EAGAIN) failSocket("read from");
      if (n == 0) {
        if (socketEofIsClean && !socketEofIsClean()) fail("pump: the local end closed after failing");
        socketOpen = false;
        tls.shutdownWrite();
      } else if (n > 0) {
        tls.write(buffer.data(), static_cast<size_t>(n));
        if (counters) counters->toTls += static_cast<uint64_t>(n);
      }
    }
    if (tlsReady) {
      size_t n = tls.read(buffer.data(), buffer.size());
      if (n == 0) {
        tlsOpen = false;
        ::shutdown(socketFd, SHUT_WR);
      }
      for (size_t done = 0; done < n;) {
        ssize_t w = ::send(socketFd, buffer.data() + done, n - done, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) failSocket("write to");
        done += static_cast<size_t>(w);
      }
      if (counters) counters->fromTls += n;
    }
  }
}

}  // namespace migrate
