#include "coordinator/http-server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <array>
#include <cctype>
#include <climits>
#include <cstring>
#include <deque>
#include <nlohmann/json.hpp>
#include <thread>
#include <vector>

#include "common/error.h"
#include "common/log.h"
#include "common/syscall.h"

namespace migrate {

using Clock = std::chrono::steady_clock;

namespace {

// Workers beyond the connection cap: up to kMaxWaiting connections wait for
// a slot (HttpLimits::admissionWait), more are refused at once, and the last
// kRefusalWorkers only ever answer 429, so a refusal never waits behind the
// admitted or the waiting connections.
constexpr int kMaxWaiting = 64;
constexpr int kRefusalWorkers = 4;
// A refused or cut connection: time to send the answer, and to read what the
// client still sends (a body it had started) so that closing does not reset
// the connection before the client has read the answer.
constexpr auto kRefusalBudget = std::chrono::milliseconds(500);
constexpr auto kLingerBudget = std::chrono::seconds(2);
constexpr size_t kLingerMaxBytes = 8 << 20;
// Chunked bodies are counted as sent, framing included.
constexpr size_t kChunkFramingSlack = 64 * 1024;

std::string describeLimit(std::chrono::milliseconds d) {
  auto ms = d.count();
  return ms % 1000 == 0 ? std::to_string(ms / 1000) + " s" : std::to_string(ms) + " ms";
}

std::string describeBytes(size_t bytes) {
  if (bytes % (1 << 20) == 0) return std::to_string(bytes >> 20) + " MiB";
  if (bytes % 1024 == 0) return std::to_string(bytes >> 10) + " KiB";
  return std::to_string(bytes) + " bytes";
}

std::string openSslError() {
  std::string out;
  while (unsigned long e = ERR_get_error()) {
    char buffer[256];
    ERR_error_string_n(e, buffer, sizeof buffer);
    out += (out.empty() ? "" : "; ") + std::string(buffer);
  }
  return out.empty() ? "unknown OpenSSL error" : out;
}

enum class Wait { Ready, TimedOut, Stopped, Failed };

// poll() for `events` on `fd` and for the stop eventfd, until `deadline`.
Wait waitFor(int fd, short events, int stopFd, Clock::time_point deadline) {
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) return Wait::TimedOut;
    pollfd fds[2] = {{fd, events, 0}, {stopFd, POLLIN, 0}};
    int n = ::poll(fds, 2, static_cast<int>(std::min<long long>(left + 1, INT_MAX)));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Wait::Failed;
    }
    if (fds[1].revents) return Wait::Stopped;
    if (fds[0].revents) return Wait::Ready;  // POLLHUP/POLLERR too: the next call reports them.
  }
}

// Peer identity for the per-client cap: the IP address on TCP (every port of
// one address is one client), the uid on the unix socket.
std::string clientOf(int fd) {
  sockaddr_storage address{};
  socklen_t length = sizeof(address);
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) return "unknown";
  char text[INET6_ADDRSTRLEN] = "";
  if (address.ss_family == AF_INET) {
    ::inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(&address)->sin_addr, text, sizeof text);
    return text;
  }
  if (address.ss_family == AF_INET6) {
    ::inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6*>(&address)->sin6_addr, text, sizeof text);
    return text;
  }
  ucred peer{};
  socklen_t peerLength = sizeof(peer);
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &peer, &peerLength) == 0) return "uid " + std::to_string(peer.uid);
  return "unix";
}

void endpointOf(int fd, bool peer, std::string& ip, int& port) {
  sockaddr_storage address{};
  socklen_t length = sizeof(address);
  int rc = peer ? ::getpeername(fd, reinterpret_cast<sockaddr*>(&address), &length)
                : ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
  ip.clear();
  port = 0;
  if (rc != 0) return;
  char text[INET6_ADDRSTRLEN] = "";
  if (address.ss_family == AF_INET) {
    auto* in = reinterpret_cast<sockaddr_in*>(&address);
    ::inet_ntop(AF_INET, &in->sin_addr, text, sizeof text);
    port = ntohs(in->sin_port);
  } else if (address.ss_family == AF_INET6) {
    auto* in6 = reinterpret_cast<sockaddr_in6*>(&address);
    ::inet_ntop(AF_INET6, &in6->sin6_addr, text, sizeof text);
    port = ntohs(in6->sin6_port);
  }
  ip = text;
}

struct Refusal {
  int status;
  std::string kind;  // ErrorKind name, as in every API error body.
  std::string message;
};

std::string refusalResponse(const Refusal& r) {
  std::string body = nlohmann::json{{"error", r.message}, {"kind", r.kind}}.dump() + "\n";
  std::string out = "HTTP/1.1 " + std::to_string(r.status) + " " + std::string(httpReasonPhrase(r.status)) + "\r\n";
  out += "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n";
  if (r.status == 429) out += "Retry-After: 1\r\n";
  out += "Connection: close\r\n\r\n" + body;
  return out;
}

// A thread writing to a socket the peer closed gets SIGPIPE unless it is
// blocked: send() has MSG_NOSIGNAL, but OpenSSL's socket BIO uses write().
// Blocked on each worker, the signal stays pending on that thread, harmless.
void blockSigpipe() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

// httplib's ThreadPool starts all its threads at once; this one starts them
// as connections arrive, up to `max`, and keeps them until shutdown().
class OnDemandPool : public httplib::TaskQueue {
 public:
  explicit OnDemandPool(size_t max) : max_(max) {}
  ~OnDemandPool() override { shutdown(); }

  void enqueue(std::function<void()> job) override {
    {
      std::lock_guard lock(mutex_);
      jobs_.push_back(std::move(job));
      // Each idle worker takes one job; the ones beyond need a new worker
      // (idle_ counts a woken worker until it has taken its job).
      if (jobs_.size() > idle_ && workers_.size() < max_) workers_.emplace_back([this] { work(); });
    }
    ready_.notify_one();
  }

  void shutdown() override {
    std::vector<std::thread> workers;
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
      workers.swap(workers_);
    }
    ready_.notify_all();
    for (auto& w : workers) w.join();
  }

 private:
  void work() {
    std::unique_lock lock(mutex_);
    for (;;) {
      ++idle_;
      ready_.wait(lock, [&] { return stopping_ || !jobs_.empty(); });
      --idle_;
      // Queued connections are still served at shutdown (each ends at its
      // next wait, the server's stop event being set).
      if (jobs_.empty()) return;
      auto job = std::move(jobs_.front());
      jobs_.pop_front();
      lock.unlock();
      job();
      lock.lock();
    }
  }

  const size_t max_;
  std::mutex mutex_;  // guards everything below
  std::condition_variable ready_;
  std::deque<std::function<void()>> jobs_;
  std::vector<std::thread> workers_;
  size_t idle_ = 0;
  bool stopping_ = false;
};

}  // namespace

std::string_view httpReasonPhrase(int status) {
  switch (status) {
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 404: return "Not Found";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 413: return "Payload Too Large";
    case 415: return "Unsupported Media Type";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
  }
  return "Unknown";
}

// One accepted socket, non-blocking, optionally under TLS. Every wait is
// bounded by the caller's deadline and ends early when the server stops.
class HttpServer::Connection {
 public:
  enum class Handshake { Done, PlainHttp, Failed };

  Connection(Fd fd, int stopFd) : fd_(std::move(fd)), stopFd_(stopFd) {
    int flags = ::fcntl(fd_.get(), F_GETFL);
    ::fcntl(fd_.get(), F_SETFL, flags | O_NONBLOCK);
    int one = 1;
    // Headers and body go out as two writes; without this, Nagle holds the
    // second until the client's delayed ACK (40 ms per keep-alive request).
    ::setsockopt(fd_.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  ~Connection() {
    if (ssl_) SSL_free(ssl_);
    ERR_clear_error();
  }
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  int fd() const { return fd_.get(); }
  Wait lastWait() const { return lastWait_; }

  Handshake acceptTls(SSL_CTX* ctx, Clock::time_point deadline) {
    // A TLS connection starts with a handshake record (content type 22);
    // anything else is a client speaking plain HTTP to this port.
    unsigned char first = 0;
    for (;;) {
      ssize_t n = ::recv(fd(), &first, 1, MSG_PEEK);
      if (n == 1) break;
      if (n == 0) return Handshake::Failed;
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) return Handshake::Failed;
      if ((lastWait_ = waitFor(fd(), POLLIN, stopFd_, deadline)) != Wait::Ready) return Handshake::Failed;
    }
    if (first != 22) return Handshake::PlainHttp;
    ssl_ = SSL_new(ctx);
    if (!ssl_ || SSL_set_fd(ssl_, fd()) != 1) return Handshake::Failed;
    for (;;) {
      int rc = SSL_accept(ssl_);
      if (rc == 1) return Handshake::Done;
      if (!waitForSsl(rc, deadline)) {
        logDebug("http: TLS handshake with " + clientOf(fd()) + " failed: " + openSslError());
        return Handshake::Failed;
      }
    }
  }

  // Up to `size` bytes: > 0 read, 0 at the end of the stream, -1 when the
  // deadline passed, the server stops (see lastWait()) or the stream broke.
  ssize_t read(char* buffer, size_t size, Clock::time_point deadline) {
    lastWait_ = Wait::Ready;
    for (;;) {
      if (ssl_) {
        int rc = SSL_read(ssl_, buffer, static_cast<int>(std::min<size_t>(size, INT_MAX)));
        if (rc > 0) return rc;
        if (SSL_get_error(ssl_, rc) == SSL_ERROR_ZERO_RETURN) return 0;
        if (!waitForSsl(rc, deadline)) return -1;
      } else {
        ssize_t n = ::recv(fd(), buffer, size, 0);
        if (n >= 0) return n;
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) return -1;
        if ((lastWait_ = waitFor(fd(), POLLIN, stopFd_, deadline)) != Wait::Ready) return -1;
      }
    }
  }

  bool writeAll(const char* data, size_t size, Clock::time_point deadline) {
    while (size > 0) {
      if (ssl_) {
        // Retried with the same buffer and length, as SSL_write requires.
        int rc = SSL_write(ssl_, data, static_cast<int>(std::min<size_t>(size, INT_MAX)));
        if (rc > 0) {
          data += rc;
          size -= static_cast<size_t>(rc);
        } else if (!waitForSsl(rc, deadline)) {
          return false;
        }
      } else {
        ssize_t n = ::send(fd(), data, size, MSG_NOSIGNAL);
        if (n > 0) {
          data += n;
          size -= static_cast<size_t>(n);
        } else if (n < 0 && errno == EINTR) {
          continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
          if ((lastWait_ = waitFor(fd(), POLLOUT, stopFd_, deadline)) != Wait::Ready) return false;
        } else {
          return false;
        }
      }
    }
    return true;
  }
  bool writeAll(const std::string& s, Clock::time_point deadline) { return writeAll(s.data(), s.size(), deadline); }

  // After an answer the client may not expect yet (it is still sending):
  // close our side, then read and drop what it sends until it closes too, so
  // that our close does not turn into a reset that discards the answer.
  void lingerClose(Clock::time_point deadline) {
    if (ssl_) SSL_shutdown(ssl_);
    ::shutdown(fd(), SHUT_WR);
    std::array<char, 16384> sink;
    for (size_t drained = 0; drained < kLingerMaxBytes;) {
      ssize_t n = ::recv(fd(), sink.data(), sink.size(), 0);
      if (n > 0) {
        drained += static_cast<size_t>(n);
      } else if (n < 0 && errno == EINTR) {
        continue;
      } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        if (waitFor(fd(), POLLIN, stopFd_, deadline) != Wait::Ready) return;
      } else {
        return;
      }
    }
  }

  void close() {
    if (ssl_) SSL_shutdown(ssl_);
    ::shutdown(fd(), SHUT_RDWR);
  }

 private:
  // After a failed SSL call: waits for what it wants; false if it wants
  // nothing that waiting gives (an error, or the peer closed).
  bool waitForSsl(int rc, Clock::time_point deadline) {
    int error = SSL_get_error(ssl_, rc);
    short events = error == SSL_ERROR_WANT_READ ? POLLIN : error == SSL_ERROR_WANT_WRITE ? POLLOUT : 0;
    if (events == 0) return false;
    return (lastWait_ = waitFor(fd(), events, stopFd_, deadline)) == Wait::Ready;
  }

  Fd fd_;
  int stopFd_;
  SSL* ssl_ = nullptr;
  Wait lastWait_ = Wait::Ready;
};

// What httplib reads requests from and writes answers to. Reads of one
// request share its deadline and count its bytes; once a limit is broken the
// request is refused: reads fail, so httplib neither reads on nor runs a
// handler, and its own error answer is dropped for the server's (serve()).
class HttpServer::RequestStream : public httplib::Stream {
 public:
  RequestStream(Connection& connection, const HttpLimits& limits) : connection_(connection), limits_(limits) {}

  void beginRequest() {
    deadline_ = Clock::now() + limits_.requestTimeout;
    writeDeadline_.reset();
    consumed_ = headerBytes_ = bodyBytes_ = 0;
    terminator_ = 0;
    refusal_.reset();
  }

  void refuse(int status, std::string kind, std::string message) {
    if (!refusal_) refusal_ = Refusal{status, std::move(kind), std::move(message)};
  }
  const std::optional<Refusal>& refusal() const { return refusal_; }

  bool is_readable() const override { return pos_ < len_; }
  bool is_writable() const override { return !broken_; }

  ssize_t read(char* out, size_t size) override {
    if (refusal_) return -1;
    if (size == 0) return 0;
    if (pos_ == len_) {
      ssize_t n = connection_.read(buffer_.data(), buffer_.size(), deadline_);
      if (n <= 0) {
        // Nothing at all by the deadline is an idle keep-alive connection,
        // closed without a word; part of a request is a slow client.
        if (n < 0 && connection_.lastWait() == Wait::TimedOut && consumed_ > 0) {
          refuse(408, "disconnected",
                 "http: request not complete within " + describeLimit(limits_.requestTimeout) +
                     " (the request timeout: request line, headers and body together)");
        }
        return n;
      }
      pos_ = 0;
      len_ = static_cast<size_t>(n);
    }
    size_t take = std::min(size, len_ - pos_);
    if (terminator_ < 4) {
      // Until the blank line, one byte at a time is what httplib asks for
      // anyway; stopping at it keeps header and body bytes apart.
      size_t i = 0;
      while (i < take && terminator_ < 4) {
        char c = buffer_[pos_ + i++];
        terminator_ = c == '\r' ? (terminator_ == 2 ? 3 : 1) : c == '\n' ? (terminator_ == 1 || terminator_ == 3 ? terminator_ + 1 : 0) : 0;
      }
      take = i;
      headerBytes_ += take;
      if (headerBytes_ > limits_.maxHeaderBytes) {
        refuse(431, "invalid-input",
               "http: request line and headers over the limit of " + describeBytes(limits_.maxHeaderBytes));
        return -1;
      }
    } else {
      bodyBytes_ += take;
      if (bodyBytes_ > limits_.maxBodyBytes + kChunkFramingSlack) {
        refuse(413, "invalid-input", "http: request body over the limit of " + describeBytes(limits_.maxBodyBytes));
        return -1;
      }
    }
    std::memcpy(out, buffer_.data() + pos_, take);
    pos_ += take;
    consumed_ += take;
    return static_cast<ssize_t>(take);
  }

  ssize_t write(const char* data, size_t size) override {
    if (refusal_) return static_cast<ssize_t>(size);  // Dropped: serve() answers instead.
    if (broken_) return -1;
    if (!writeDeadline_) writeDeadline_ = Clock::now() + limits_.responseTimeout;
    if (!connection_.writeAll(data, size, *writeDeadline_)) {
      broken_ = true;
      return -1;
    }
    return static_cast<ssize_t>(size);
  }

  void get_remote_ip_and_port(std::string& ip, int& port) const override { endpointOf(connection_.fd(), true, ip, port); }
  void get_local_ip_and_port(std::string& ip, int& port) const override { endpointOf(connection_.fd(), false, ip, port); }
  socket_t socket() const override { return connection_.fd(); }

 private:
  Connection& connection_;
  const HttpLimits& limits_;
  std::array<char, 16384> buffer_;
  size_t pos_ = 0, len_ = 0;  // Read from the socket, not yet handed to httplib (a pipelined next request).
  Clock::time_point deadline_;
  std::optional<Clock::time_point> writeDeadline_;
  size_t consumed_ = 0, headerBytes_ = 0, bodyBytes_ = 0;
  int terminator_ = 0;  // How much of "\r\n\r\n" was just seen; 4: headers are done.
  std::optional<Refusal> refusal_;
  bool broken_ = false;
};

// A connection counted against the caps until it is closed.
class HttpServer::Slot {
 public:
  Slot(HttpServer& server, std::string client) : server_(server), client_(std::move(client)) {
    refusal_ = server_.admit(client_);
  }
  ~Slot() {
    if (!refusal_) server_.release(client_);
  }
  Slot(const Slot&) = delete;
  Slot& operator=(const Slot&) = delete;
  const std::optional<std::string>& refusal() const { return refusal_; }

 private:
  HttpServer& server_;
  std::string client_;
  std::optional<std::string> refusal_;
};

HttpServer::HttpServer(HttpLimits limits, const TlsFiles* tls)
    : limits_(limits), tls_(nullptr, SSL_CTX_free), stopEvent_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {
  if (!stopEvent_) failErrno(errno, "eventfd");
  size_t workers = static_cast<size_t>(limits_.maxConnections + kMaxWaiting + kRefusalWorkers);
  new_task_queue = [workers] { return new OnDemandPool(workers); };
  set_payload_max_length(limits_.maxBodyBytes);
  set_keep_alive_max_count(static_cast<size_t>(limits_.maxRequestsPerConnection));
  if (!tls) return;
  ErrorContext context("http: TLS certificate " + tls->certificate.string() + " and key " + tls->privateKey.string());
  tls_.reset(SSL_CTX_new(TLS_server_method()));
  if (!tls_) fail(ErrorKind::Failed, openSslError());
  SSL_CTX_set_min_proto_version(tls_.get(), TLS1_2_VERSION);
  SSL_CTX_set_options(tls_.get(), SSL_OP_NO_RENEGOTIATION);
  if (SSL_CTX_use_certificate_chain_file(tls_.get(), tls->certificate.c_str()) != 1) {
    fail(ErrorKind::InvalidInput, "cannot load the certificate: " + openSslError());
  }
  if (SSL_CTX_use_PrivateKey_file(tls_.get(), tls->privateKey.c_str(), SSL_FILETYPE_PEM) != 1) {
    fail(ErrorKind::InvalidInput, "cannot load the private key: " + openSslError());
  }
  if (SSL_CTX_check_private_key(tls_.get()) != 1) {
    fail(ErrorKind::InvalidInput, "the key does not match the certificate: " + openSslError());
  }
}

HttpServer::~HttpServer() { stopServing(); }

void HttpServer::adoptListeningSocket(Fd fd) { svr_sock_ = fd.release(); }

void HttpServer::stopServing() {
  uint64_t one = 1;
  [[maybe_unused]] auto written = ::write(stopEvent_.get(), &one, sizeof one);
  stop();
}

HttpServer::Occupancy HttpServer::occupancy() {
  std::lock_guard lock(mutex_);
  return {total_, waiting_};
}

std::optional<std::string> HttpServer::admit(const std::string& client) {
  std::unique_lock lock(mutex_);
  auto mine = [&] {
    auto it = perClient_.find(client);
    return it == perClient_.end() ? 0 : it->second;
  };
  auto free = [&] { return total_ < limits_.maxConnections && mine() < limits_.maxConnectionsPerClient; };
  if (!free() && waiting_ < kMaxWaiting) {
    ++waiting_;
    slotFreed_.wait_for(lock, limits_.admissionWait, free);
    --waiting_;
  }
  if (total_ >= limits_.maxConnections) {
    return "http: too many connections (limit " + std::to_string(limits_.maxConnections) + " in all); retry later";
  }
  if (mine() >= limits_.maxConnectionsPerClient) {
    return "http: too many connections from " + client + " (limit " + std::to_string(limits_.maxConnectionsPerClient) +
           " per client)";
  }
  ++perClient_[client];
  ++total_;
  return std::nullopt;
}

void HttpServer::release(const std::string& client) {
  {
    std::lock_guard lock(mutex_);
    --total_;
    auto it = perClient_.find(client);
    if (it != perClient_.end() && --it->second <= 0) perClient_.erase(it);
  }
  slotFreed_.notify_all();
}

bool HttpServer::process_and_close_socket(socket_t sock) {
  blockSigpipe();
  Connection connection(Fd(sock), stopEvent_.get());
  Slot slot(*this, clientOf(connection.fd()));
  if (slot.refusal()) {
    // Answered over TLS too (with a short handshake budget), so a client
    // over the cap learns why instead of seeing a reset.
    auto deadline = Clock::now() + kRefusalBudget;
    if (tls_ && connection.acceptTls(tls_.get(), deadline) != Connection::Handshake::Done) return false;
    logDebug(*slot.refusal());
    connection.writeAll(refusalResponse({429, "overloaded", *slot.refusal()}), deadline);
    connection.lingerClose(deadline);
    return false;
  }
  if (tls_) {
    auto deadline = Clock::now() + limits_.requestTimeout;
    switch (connection.acceptTls(tls_.get(), deadline)) {
      case Connection::Handshake::Done: break;
      case Connection::Handshake::Failed: return false;
      case Connection::Handshake::PlainHttp:
        connection.writeAll(refusalResponse({400, "invalid-input",
                                             "http: this port serves HTTPS; plain HTTP was sent (use https://)"}),
                            deadline);
        connection.lingerClose(Clock::now() + kRefusalBudget);
        return false;
    }
  }
  serve(connection);
  return true;
}

// httplib's keep-alive loop (process_server_socket_core), with the stream
// above in place of its SocketStream.
void HttpServer::serve(Connection& connection) {
  RequestStream stream(connection, limits_);
  // Headers that decide, before any body byte is read, that it will not be.
  auto checkHead = [&](httplib::Request& req) {
    if (req.has_header("Content-Length")) {
      const std::string& declared = req.get_header_value("Content-Length");
      char* end = nullptr;
      errno = 0;
      unsigned long long length = std::strtoull(declared.c_str(), &end, 10);
      if (declared.empty() || *end != '\0' || !std::isdigit(static_cast<unsigned char>(declared[0]))) {
        stream.refuse(400, "invalid-input", "http: Content-Length `" + declared + "` is not a number");
      } else if (errno == ERANGE || length > limits_.maxBodyBytes) {
        stream.refuse(413, "invalid-input",
                      "http: request body of " + declared + " bytes is over the limit of " +
                          describeBytes(limits_.maxBodyBytes));
      }
    }
    // httplib would inflate gzip or brotli bodies without a bound on the
    // result: 1 MiB sent could become gigabytes.
    std::string encoding = req.get_header_value("Content-Encoding");
    if (!encoding.empty() && encoding != "identity") {
      stream.refuse(415, "invalid-input", "http: Content-Encoding `" + encoding + "` is not accepted; send plain JSON");
    }
  };
  for (int served = 0; served < limits_.maxRequestsPerConnection && svr_sock_ != INVALID_SOCKET; ++served) {
    stream.beginRequest();
    bool closeConnection = served + 1 == limits_.maxRequestsPerConnection;
    bool connectionClosed = false;
    bool ok = process_request(stream, closeConnection, connectionClosed, checkHead);
    if (auto& refusal = stream.refusal()) {
      logInfo(refusal->message + " (client " + clientOf(connection.fd()) + ")");
      connection.writeAll(refusalResponse(*refusal), Clock::now() + kRefusalBudget);
      connection.lingerClose(Clock::now() + kLingerBudget);
      return;
    }
    if (!ok || connectionClosed) break;
  }
  connection.close();
}

}  // namespace migrate
