#include "net/data-listener.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <iterator>
#include <optional>
#include <random>
#include <sstream>
#include <vector>

#include "common/error.h"
#include "common/files.h"
#include "common/log.h"
#include "common/syscall.h"

namespace migrate {

namespace {

// Asking for buffers turns off the kernel's autotuning for the socket, so ask
// for enough: 4 MiB (the kernel doubles it, and clamps it to
// net.core.[rw]mem_max) keeps a 1 Gbit/s link full at up to ~30 ms RTT and a
// loopback or veth lab at tens of Gbit/s. Set before listen/connect so the
// window scale offered in the SYN accounts for it.
constexpr int kSocketBufferBytes = 4 << 20;

// Room in the kernel's accept queue: connections wait there only until the
// receiver's loop takes them, which it does at once (acceptTls), so this
// only has to absorb a burst.
constexpr int kListenBacklog = 64;

// How often a wait looks at its stop flag.
constexpr std::chrono::milliseconds kStopPollSlice(200);

// Strangers logged one by one per acceptTls; a flood beyond is counted.
constexpr size_t kLoggedDrops = 8;

using Clock = std::chrono::steady_clock;

void tuneBuffers(int fd) {
  int size = kSocketBufferBytes;
  // Best effort: a smaller buffer is slower, not wrong.
  (void)::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof(size));
  (void)::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
  // TCP_NODELAY stays off: the stream is bulk data written in large chunks,
  // and Nagle coalesces the odd small TLS record.
}

struct Address {
  sockaddr_storage storage{};
  socklen_t length = 0;
  int family() const { return storage.ss_family; }
  const sockaddr* get() const { return reinterpret_cast<const sockaddr*>(&storage); }
};

Address parseAddress(const std::string& host, uint16_t port, std::string_view what) {
  addrinfo hints{};
  hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* result = nullptr;
  std::string service = std::to_string(port);
  int rc = ::getaddrinfo(host.c_str(), service.c_str(), &hints, &result);
  if (rc != 0 || result == nullptr) {
    fail(ErrorKind::InvalidInput,
         "data: " + std::string(what) + " `" + host + "` is not a numeric IP address (" + gai_strerror(rc) + ")");
  }
  Address address;
  std::memcpy(&address.storage, result->ai_addr, result->ai_addrlen);
  address.length = result->ai_addrlen;
  ::freeaddrinfo(result);
  return address;
}

std::string formatAddress(const sockaddr_storage& storage) {
  char text[INET6_ADDRSTRLEN] = {};
  if (storage.ss_family == AF_INET) {
    auto* in = reinterpret_cast<const sockaddr_in*>(&storage);
    ::inet_ntop(AF_INET, &in->sin_addr, text, sizeof(text));
    return std::string(text) + ":" + std::to_string(ntohs(in->sin_port));
  }
  if (storage.ss_family == AF_INET6) {
    auto* in6 = reinterpret_cast<const sockaddr_in6*>(&storage);
    ::inet_ntop(AF_INET6, &in6->sin6_addr, text, sizeof(text));
    return "[" + std::string(text) + "]:" + std::to_string(ntohs(in6->sin6_port));
  }
  return "unknown peer";
}

std::string seconds(std::chrono::milliseconds timeout) {
  auto ms = timeout.count();
  if (ms % 1000 == 0) return std::to_string(ms / 1000) + "s";
  return std::to_string(ms) + "ms";
}

// poll() one fd for `events`, retrying EINTR against the same deadline.
bool waitFor(int fd, short events, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    pollfd p{fd, events, 0};
    int rc = ::poll(&p, 1, static_cast<int>(std::max<int64_t>(left.count(), 0)));
    if (rc > 0) return true;
    if (rc == 0) return false;
    if (errno != EINTR) failErrno(errno, "data: poll");
  }
}

}  // namespace

std::string socketPeerName(int fd) {
  sockaddr_storage storage{};
  socklen_t length = sizeof(storage);
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&storage), &length) != 0) return "unknown peer";
  return formatAddress(storage);
}

DataListener::DataListener(std::string bindAddress) : address_(std::move(bindAddress)) {
  Address address = parseAddress(address_, 0, "bind address");
  // Non-blocking: accept only after poll, and a connection gone in between
  // must not block the loop (accepted sockets are blocking all the same).
  fd_ = Fd(SYSCALL(::socket(address.family(), SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0), "data: socket"));
  tuneBuffers(fd_.get());
  SYSCALL(::bind(fd_.get(), address.get(), address.length), "data: bind to", address_);
  SYSCALL(::listen(fd_.get(), kListenBacklog), "data: listen on", address_);
  port_ = boundPort(fd_.get());
}

DataListener::DataListener(Fd listening, std::string bindAddress)
    : address_(std::move(bindAddress)), fd_(std::move(listening)) {
  int flags = SYSCALL(::fcntl(fd_.get(), F_GETFL), "data: fcntl");
  SYSCALL(::fcntl(fd_.get(), F_SETFL, flags | O_NONBLOCK), "data: fcntl");
  port_ = boundPort(fd_.get());
}

uint16_t DataListener::boundPort(int fd) {
  sockaddr_storage bound{};
  socklen_t length = sizeof(bound);
  SYSCALL(::getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &length), "data: getsockname");
  return bound.ss_family == AF_INET ? ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port)
                                    : ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port);
}

std::string DataListener::where() const { return address_ + ":" + std::to_string(port_); }

Fd DataListener::tryAccept() {
  for (;;) {
    // Accepted sockets inherit the listener's buffer sizes.
    int fd = ::accept4(fd_.get(), nullptr, nullptr, SOCK_CLOEXEC);
    if (fd >= 0) return Fd(fd);
    switch (errno) {
      case EINTR:
        continue;
      case EAGAIN:
#if EWOULDBLOCK != EAGAIN
      case EWOULDBLOCK:
#endif
      // accept(2): errors already pending on the new connection are passed
      // on; the connection is gone, the listener is fine.
      case ECONNABORTED:
      case EPROTO:
      case ENETDOWN:
      case ENOPROTOOPT:
      case EHOSTDOWN:
      case ENONET:
      case EHOSTUNREACH:
      case EOPNOTSUPP:
      case ENETUNREACH:
        return Fd();
      default:
        failErrno(errno, "data: accept on " + where());
    }
  }
}

Fd DataListener::acceptOne(std::chrono::milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (!waitFor(fd_.get(), POLLIN, std::max(left, std::chrono::milliseconds(0)))) {
      fail(ErrorKind::Disconnected, "data: no sender connected to " + where() + " within " + seconds(timeout));
    }
    if (Fd fd = tryAccept()) return fd;
  }
}

Fd DataListener::acceptOne(std::chrono::milliseconds timeout, const std::atomic<bool>& stop) {
  auto deadline = Clock::now() + timeout;
  for (;;) {
    if (stop) fail(ErrorKind::Failed, "data: stopped waiting for a sender on " + where());
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left <= std::chrono::milliseconds(0)) {
      fail(ErrorKind::Disconnected, "data: no sender connected to " + where() + " within " + seconds(timeout));
    }
    if (waitFor(fd_.get(), POLLIN, std::min(kStopPollSlice, left))) {
      if (Fd fd = tryAccept()) return fd;
    }
  }
}

TlsStream DataListener::acceptTls(const std::string& pskIdentity, std::span<const uint8_t> psk,
                                  std::chrono::milliseconds timeout, const std::atomic<bool>& stop,
                                  const TlsAcceptOptions& options) {
  struct Pending {
    TlsHandshake handshake;
    short events;
    Clock::time_point deadline;
    std::string peerHost;  // its address without the port
  };
  std::deque<Pending> pending;  // oldest first
  size_t dropped = 0;
  auto drop = [&](std::deque<Pending>::iterator it, const std::string& why) {
    if (++dropped <= kLoggedDrops) {
      logWarn("data: " + where() + ": dropped " + it->handshake.peer() + ", not our sender: " + why);
    } else if (dropped == kLoggedDrops + 1) {
      logWarn("data: " + where() + ": more connections dropped; counting, not logging them");
    }
    return pending.erase(it);  // closes it
  };
  auto authenticated = [&](Pending& p) {
    if (dropped > 0) {
      logInfo("data: " + where() + ": sender " + p.handshake.peer() + " authenticated; " + std::to_string(dropped) +
              " other connection(s) dropped");
    }
    return std::move(p.handshake).finish();
  };
  // Advances `it`'s handshake: the stream once complete, the connection
  // dropped if it fails.
  auto advance = [&](std::deque<Pending>::iterator& it) -> std::optional<TlsStream> {
    try {
      it->events = it->handshake.advance();
      if (it->events == 0) return authenticated(*it);
      ++it;
    } catch (const std::exception& e) {
      it = drop(it, e.what());
    }
    return std::nullopt;
  };

  TlsOptions tls{options.ioTimeout, options.handshakeTimeout, &stop};
  auto deadline = Clock::now() + timeout;
  std::vector<pollfd> fds;
  for (;;) {
    if (stop) fail(ErrorKind::Failed, "data: stopped waiting for a sender on " + where());
    auto now = Clock::now();
    if (now >= deadline) {
      fail(ErrorKind::Disconnected, "data: no sender authenticated on " + where() + " within " + seconds(timeout) +
                                        (dropped ? " (" + std::to_string(dropped) + " connection(s) dropped)" : ""));
    }
    for (auto it = pending.begin(); it != pending.end();) {
      it = it->deadline <= now ? drop(it, "no TLS handshake within " + seconds(options.handshakeTimeout)) : it + 1;
    }

    auto wake = std::min(deadline, now + kStopPollSlice);
    for (auto& p : pending) wake = std::min(wake, p.deadline);
    fds.assign(1, pollfd{fd_.get(), POLLIN, 0});
    for (auto& p : pending) fds.push_back(pollfd{p.handshake.fd(), p.events, 0});
    int waitMs = static_cast<int>(std::chrono::ceil<std::chrono::milliseconds>(wake - now).count());
    int ready = ::poll(fds.data(), fds.size(), std::max(waitMs, 0));
    if (ready < 0 && errno == EINTR) continue;
    SYSCALL(ready, "data: poll on", where());
    if (ready == 0) continue;

    // Pending ones first (fds[1..] follow `pending`'s order), then newcomers.
    size_t index = 1;
    for (auto it = pending.begin(); it != pending.end(); ++index) {
      if (fds[index].revents == 0) {
        ++it;
        continue;
      }
      if (auto stream = advance(it)) return std::move(*stream);
    }
    if (fds[0].revents & POLLIN) {
      Fd sock = tryAccept();
      if (!sock) continue;
      std::string peer = socketPeerName(sock.get());
      std::string peerHost = peer.substr(0, peer.rfind(':'));
      // One address makes room only among its own connections, so a
      // stranger cannot evict a sender on another host without holding
      // maxPending / maxPendingPerPeer addresses.
      auto sameHost = [&](const Pending& p) { return p.peerHost == peerHost; };
      if (static_cast<size_t>(std::count_if(pending.begin(), pending.end(), sameHost)) >=
          std::max<size_t>(options.maxPendingPerPeer, 1)) {
        drop(std::find_if(pending.begin(), pending.end(), sameHost),
             "pending handshakes from " + peerHost + " at their limit of " + std::to_string(options.maxPendingPerPeer) +
                 "; its oldest makes room");
      } else if (pending.size() >= std::max<size_t>(options.maxPending, 1)) {
        drop(pending.begin(), "pending handshakes at their limit of " + std::to_string(options.maxPending) +
                                  "; the oldest makes room");
      }
      try {
        pending.push_back(Pending{TlsHandshake::accept(std::move(sock), pskIdentity, psk, tls), POLLIN,
                                  Clock::now() + options.handshakeTimeout, peerHost});
      } catch (const Error& e) {
        // Our own parameters (key size, identity) are wrong: no sender can
        // ever authenticate.
        if (e.kind() == ErrorKind::InvalidInput) throw;
        logWarn("data: " + where() + ": dropped " + peer + ": " + e.what());
        continue;
      }
      // Its ClientHello may be there already.
      auto it = std::prev(pending.end());
      if (auto stream = advance(it)) return std::move(*stream);
    }
  }
}

uint16_t pickLoopbackPort() {
  // Below the ephemeral range, above the well-known and registered ports
  // most daemons use.
  constexpr unsigned kLowest = 20000;
  unsigned ephemeralLow = 32768;
  if (auto range = readFileIfExists("/proc/sys/net/ipv4/ip_local_port_range")) {
    std::istringstream(*range) >> ephemeralLow;
  }
  if (ephemeralLow <= kLowest + 100) fail(ErrorKind::Failed, "ip_local_port_range starts at " +
                                              std::to_string(ephemeralLow) + ": no port below it to pick");
  std::random_device random;
  for (int attempt = 0; attempt < 64; ++attempt) {
    auto port = static_cast<uint16_t>(kLowest + random() % (ephemeralLow - kLowest));
    Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd) failErrno(errno, "socket");
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) return port;
  }
  fail(ErrorKind::Overloaded, "no free loopback port below " + std::to_string(ephemeralLow) + " after 64 tries");
}

Fd connectTcp(const std::string& host, uint16_t port, std::chrono::milliseconds timeout) {
  std::string where = host + ":" + std::to_string(port);
  Address address = parseAddress(host, port, "address");
  Fd fd(SYSCALL(::socket(address.family(), SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0), "data: socket"));
  tuneBuffers(fd.get());
  if (::connect(fd.get(), address.get(), address.length) != 0) {
    if (errno != EINPROGRESS) failErrno(errno, "data: connect to " + where);
    if (!waitFor(fd.get(), POLLOUT, timeout)) {
      fail(ErrorKind::Disconnected, "data: connect to " + where + " timed out after " + seconds(timeout));
    }
    int error = 0;
    socklen_t length = sizeof(error);
    SYSCALL(::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &error, &length), "data: getsockopt SO_ERROR");
    if (error != 0) {
      if (error == EHOSTUNREACH || error == ENETUNREACH) {
        fail(ErrorKind::Disconnected, "data: connect to " + where + ": " + std::strerror(error));
      }
      failErrno(error, "data: connect to " + where);
    }
  }
  int flags = SYSCALL(::fcntl(fd.get(), F_GETFL), "data: fcntl");
  SYSCALL(::fcntl(fd.get(), F_SETFL, flags & ~O_NONBLOCK), "data: fcntl");
  return fd;
}

}  // namespace migrate
