#include "net/data-listener.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>

#include <cstring>

#include "common/error.h"
#include "common/syscall.h"

namespace migrate {

namespace {

// Asking for buffers turns off the kernel's autotuning for the socket, so ask
// for enough: 4 MiB (the kernel doubles it, and clamps it to
// net.core.[rw]mem_max) keeps a 1 Gbit/s link full at up to ~30 ms RTT and a
// loopback or veth lab at tens of Gbit/s. Set before listen/connect so the
// window scale offered in the SYN accounts for it.
constexpr int kSocketBufferBytes = 4 << 20;

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
  fd_ = Fd(SYSCALL(::socket(address.family(), SOCK_STREAM | SOCK_CLOEXEC, 0), "data: socket"));
  tuneBuffers(fd_.get());
  SYSCALL(::bind(fd_.get(), address.get(), address.length), "data: bind to", address_);
  // One sender is expected; a small backlog leaves room for a stranger that
  // raced it and will fail TLS.
  SYSCALL(::listen(fd_.get(), 4), "data: listen on", address_);
  sockaddr_storage bound{};
  socklen_t length = sizeof(bound);
  SYSCALL(::getsockname(fd_.get(), reinterpret_cast<sockaddr*>(&bound), &length), "data: getsockname");
  port_ = bound.ss_family == AF_INET ? ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port)
                                     : ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port);
}

Fd DataListener::acceptOne(std::chrono::milliseconds timeout) {
  std::string where = address_ + ":" + std::to_string(port_);
  if (!waitFor(fd_.get(), POLLIN, timeout)) {
    fail(ErrorKind::Disconnected, "data: no sender connected to " + where + " within " + seconds(timeout));
  }
  // Accepted sockets inherit the listener's buffer sizes.
  return Fd(SYSCALL(::accept4(fd_.get(), nullptr, nullptr, SOCK_CLOEXEC), "data: accept on", where));
}

Fd DataListener::acceptOne(std::chrono::milliseconds timeout, const std::atomic<bool>& stop) {
  constexpr std::chrono::milliseconds kSlice(250);
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    if (stop) fail(ErrorKind::Failed, "data: stopped waiting for a sender on " + address_ + ":" + std::to_string(port_));
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left <= std::chrono::milliseconds(0)) {
      fail(ErrorKind::Disconnected, "data: no sender connected to " + address_ + ":" + std::to_string(port_) +
                                        " within " + seconds(timeout));
    }
    // Readable: the plain accept takes it without waiting.
    if (waitFor(fd_.get(), POLLIN, std::min(kSlice, left))) return acceptOne(std::chrono::milliseconds(0));
  }
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
