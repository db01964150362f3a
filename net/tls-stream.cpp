#include "net/tls-stream.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <poll.h>

#include <cerrno>
#include <cstring>
#include <optional>
#include <string_view>

#include "common/error.h"
#include "net/data-listener.h"

namespace migrate {

namespace {

constexpr size_t kMinPskBytes = 16;
constexpr size_t kMaxPskBytes = 48;  // SSL_MAX_MASTER_KEY_LENGTH.
constexpr size_t kGeneratedPskBytes = 32;
// TLS_AES_256_GCM_SHA384: AES-NI makes it as fast as the 128-bit suite here,
// and the PSK's hash must match the suite's, so both sides pin this one.
constexpr const char* kCipherSuite = "TLS_AES_256_GCM_SHA384";
constexpr unsigned char kCipherId[2] = {0x13, 0x02};
constexpr const char* kGroups = "X25519:P-256";

// ---- A socket BIO that never raises SIGPIPE, and never blocks in the kernel.
// OpenSSL's own socket BIO write()s, which kills the process with SIGPIPE when
// the peer is gone, unless the whole program ignores the signal. send() with
// MSG_NOSIGNAL turns that into EPIPE, which we report as Disconnected.
//
// Every recv()/send() is MSG_DONTWAIT. A multiplexed handshake (TlsHandshake)
// hands EAGAIN back to OpenSSL as "retry"; a blocking stream waits in poll()
// instead, where it also sees its deadline and its stop flag: a thread
// blocked in a read can be stopped without anyone else touching its socket.

using Clock = std::chrono::steady_clock;

// How often a wait looks at its stop flag.
constexpr std::chrono::milliseconds kStopPollSlice(200);

struct SocketBioState {
  int fd = -1;
  bool eof = false;
  int lastErrno = 0;
  bool nonBlocking = false;                   // EAGAIN goes back to OpenSSL as retry
  std::chrono::milliseconds ioTimeout{0};     // a wait longer than this times out; <= 0: no limit
  std::optional<Clock::time_point> deadline;  // the handshake's, besides ioTimeout
  const std::atomic<bool>* stop = nullptr;
  bool timedOut = false;  // the last wait ran into ioTimeout or the deadline
  bool stopped = false;   // a wait saw `stop`
};

// Waits until the socket shows `events`. False when it timed out (timedOut)
// or was stopped (stopped), or poll failed (lastErrno).
bool waitSocket(SocketBioState& state, short events) {
  std::optional<Clock::time_point> limit = state.deadline;
  if (state.ioTimeout.count() > 0) {
    auto io = Clock::now() + state.ioTimeout;
    if (!limit || io < *limit) limit = io;
  }
  for (;;) {
    if (state.stop != nullptr && state.stop->load()) {
      state.stopped = true;
      return false;
    }
    auto now = Clock::now();
    if (limit && now >= *limit) {
      state.timedOut = true;
      return false;
    }
    int waitMs = -1;
    if (limit) waitMs = static_cast<int>(std::chrono::ceil<std::chrono::milliseconds>(*limit - now).count());
    if (state.stop != nullptr && (waitMs < 0 || waitMs > kStopPollSlice.count())) {
      waitMs = static_cast<int>(kStopPollSlice.count());
    }
    pollfd p{state.fd, events, 0};
    int rc = ::poll(&p, 1, waitMs);
    if (rc > 0) return true;
    if (rc < 0 && errno != EINTR) {
      state.lastErrno = errno;
      return false;
    }
  }
}

int socketBioWrite(BIO* bio, const char* data, int size) {
  auto* state = static_cast<SocketBioState*>(BIO_get_data(bio));
  BIO_clear_retry_flags(bio);
  for (;;) {
    ssize_t n = ::send(state->fd, data, static_cast<size_t>(size), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n >= 0) return static_cast<int>(n);
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      if (!state->nonBlocking && waitSocket(*state, POLLOUT)) continue;
      // Retry tells OpenSSL "would block": for a blocking stream that is a
      // timeout (failIo reports it so); a stop is an error instead.
      if (state->nonBlocking || state->timedOut) BIO_set_retry_write(bio);
      return -1;
    }
    state->lastErrno = errno;
    return -1;
  }
}

int socketBioRead(BIO* bio, char* buffer, int size) {
  auto* state = static_cast<SocketBioState*>(BIO_get_data(bio));
  BIO_clear_retry_flags(bio);
  for (;;) {
    ssize_t n = ::recv(state->fd, buffer, static_cast<size_t>(size), MSG_DONTWAIT);
    if (n > 0) return static_cast<int>(n);
    if (n == 0) {
      state->eof = true;
      return 0;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      if (!state->nonBlocking && waitSocket(*state, POLLIN)) continue;
      if (state->nonBlocking || state->timedOut) BIO_set_retry_read(bio);
      return -1;
    }
    state->lastErrno = errno;
    return -1;
  }
}

long socketBioCtrl(BIO* bio, int cmd, long, void*) {
  auto* state = static_cast<SocketBioState*>(BIO_get_data(bio));
  switch (cmd) {
    case BIO_CTRL_FLUSH:
      return 1;
    case BIO_CTRL_EOF:
      return state != nullptr && state->eof ? 1 : 0;
    default:
      return 0;
  }
}

// The method table is immutable once built, like a vtable; building it once
// per process also keeps BIO_get_new_index() from running out of indices.
const BIO_METHOD* socketBioMethod() {
  static BIO_METHOD* method = [] {
    BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "migrate socket");
    BIO_meth_set_write(m, socketBioWrite);
    BIO_meth_set_read(m, socketBioRead);
    BIO_meth_set_ctrl(m, socketBioCtrl);
    BIO_meth_set_create(m, [](BIO* b) {
      BIO_set_init(b, 1);
      return 1;
    });
    return m;
  }();
  return method;
}

// ---- OpenSSL error reporting

std::string takeOpenSslErrors() {
  std::string out;
  while (unsigned long code = ERR_get_error()) {
    char text[256];
    ERR_error_string_n(code, text, sizeof(text));
    if (!out.empty()) out += "; ";
    // "error:0A000119:SSL routines::decryption failed..." -> keep the reason.
    std::string_view view(text);
    auto colon = view.rfind("::");
    out += colon == std::string_view::npos ? view : view.substr(colon + 2);
  }
  return out;
}

bool isUnexpectedEof(unsigned long code) {
  return ERR_GET_LIB(code) == ERR_LIB_SSL && ERR_GET_REASON(code) == SSL_R_UNEXPECTED_EOF_WHILE_READING;
}

std::string describeTimeout(std::chrono::milliseconds timeout) {
  if (timeout.count() % 1000 == 0) return std::to_string(timeout.count() / 1000) + "s";
  return std::to_string(timeout.count()) + "ms";
}

struct SslCtxDeleter {
  void operator()(SSL_CTX* ctx) const { SSL_CTX_free(ctx); }
};
struct SslDeleter {
  void operator()(SSL* ssl) const { SSL_free(ssl); }
};

}  // namespace

std::vector<uint8_t> generatePsk() {
  std::vector<uint8_t> key(kGeneratedPskBytes);
  if (RAND_bytes(key.data(), static_cast<int>(key.size())) != 1) {
    fail("tls: RAND_bytes failed: " + takeOpenSslErrors());
  }
  return key;
}

struct TlsStream::Impl {
  Fd fd;
  std::string peer;
  std::string identity;
  std::vector<uint8_t> psk;
  bool server = false;
  TlsOptions options;
  SocketBioState bio;
  std::unique_ptr<SSL_CTX, SslCtxDeleter> ctx;
  std::unique_ptr<SSL, SslDeleter> ssl;
  std::optional<std::string> offeredIdentity;  // Server: a mismatching identity the client offered.
  bool writeShut = false;
  bool readEof = false;

  static std::unique_ptr<Impl> make(Fd sock, const std::string& identity, std::span<const uint8_t> psk, bool server,
                                    const TlsOptions& options);
  void setUp();
  // One SSL_do_handshake: true once complete; false when a non-blocking BIO
  // must wait (wantEvents() says for what); throws on failure.
  bool step();
  short wantEvents() const;
  void handshake();  // blocking, within options.handshakeTimeout
  void becomeStream();
  SSL_SESSION* makeSession(SSL* ssl) const;
  [[noreturn]] void failHandshake(int ret);
  [[noreturn]] void failIo(std::string_view action, int ret);
  [[noreturn]] void failStopped(std::string_view action);
};

SSL_SESSION* TlsStream::Impl::makeSession(SSL* s) const {
  const SSL_CIPHER* cipher = SSL_CIPHER_find(s, kCipherId);
  if (cipher == nullptr) return nullptr;
  SSL_SESSION* session = SSL_SESSION_new();
  if (session == nullptr || SSL_SESSION_set1_master_key(session, psk.data(), psk.size()) != 1 ||
      SSL_SESSION_set_cipher(session, cipher) != 1 ||
      SSL_SESSION_set_protocol_version(session, TLS1_3_VERSION) != 1) {
    SSL_SESSION_free(session);
    return nullptr;
  }
  return session;
}

namespace {

// Client: offers our identity and key. Called again after a HelloRetryRequest
// with the negotiated digest; a key for another digest is not offered then.
int usePskSession(SSL* ssl, const EVP_MD* md, const unsigned char** id, size_t* idLength, SSL_SESSION** session) {
  auto* impl = static_cast<TlsStream::Impl*>(SSL_get_app_data(ssl));
  SSL_SESSION* ours = impl->makeSession(ssl);
  if (ours == nullptr) return 0;
  if (md != nullptr && md != SSL_CIPHER_get_handshake_digest(SSL_SESSION_get0_cipher(ours))) {
    SSL_SESSION_free(ours);
    *id = nullptr;
    *idLength = 0;
    *session = nullptr;
    return 1;
  }
  *id = reinterpret_cast<const unsigned char*>(impl->identity.data());
  *idLength = impl->identity.size();
  *session = ours;  // OpenSSL takes ownership.
  return 1;
}

// Server: accepts exactly our identity. An unknown identity is "no PSK",
// which fails the handshake since we have no certificate to fall back on.
int findPskSession(SSL* ssl, const unsigned char* id, size_t idLength, SSL_SESSION** session) {
  auto* impl = static_cast<TlsStream::Impl*>(SSL_get_app_data(ssl));
  std::string_view offered(reinterpret_cast<const char*>(id), idLength);
  if (offered != impl->identity) {
    impl->offeredIdentity = std::string(offered);
    *session = nullptr;
    return 1;
  }
  *session = impl->makeSession(ssl);
  return *session != nullptr ? 1 : 0;
}

}  // namespace

void TlsStream::Impl::failStopped(std::string_view action) {
  ERR_clear_error();
  fail(ErrorKind::Failed, "tls: " + std::string(action) + " with " + peer + " stopped");
}

void TlsStream::Impl::failIo(std::string_view action, int ret) {
  if (bio.stopped) failStopped(action);
  int error = SSL_get_error(ssl.get(), ret);
  int savedErrno = bio.lastErrno;
  unsigned long first = ERR_peek_error();
  std::string details = takeOpenSslErrors();
  bool reading = action == "read";

  if (error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE) {
    fail(ErrorKind::Disconnected, "tls: " + std::string(action) + " with " + peer + " made no progress for " +
                                      describeTimeout(options.ioTimeout) + " (timed out)");
  }
  bool eofWithoutNotify = (error == SSL_ERROR_SSL && isUnexpectedEof(first)) ||
                          (error == SSL_ERROR_SYSCALL && (bio.eof || savedErrno == 0));
  bool reset = error == SSL_ERROR_SYSCALL && (savedErrno == ECONNRESET || savedErrno == EPIPE);
  if (reading && (eofWithoutNotify || reset)) {
    fail(ErrorKind::Disconnected, "tls: stream from " + peer + " ended before close_notify (truncated" +
                                      (reset ? std::string(": ") + std::strerror(savedErrno) : std::string()) + ")");
  }
  if (eofWithoutNotify || error == SSL_ERROR_SYSCALL) {
    std::string cause = savedErrno != 0 ? std::strerror(savedErrno) : "connection closed by peer";
    fail(ErrorKind::Disconnected, "tls: " + std::string(action) + " with " + peer + " failed: " + cause);
  }
  // A TLS alert or a record that fails authentication: someone is not
  // speaking our protocol with our key, and retrying will not change that.
  fail(ErrorKind::InvalidInput, "tls: " + std::string(action) + " with " + peer + " failed: " +
                                    (details.empty() ? "SSL error " + std::to_string(error) : details));
}

std::unique_ptr<TlsStream::Impl> TlsStream::Impl::make(Fd sock, const std::string& identity,
                                                       std::span<const uint8_t> psk, bool server,
                                                       const TlsOptions& options) {
  auto impl = std::make_unique<Impl>();
  impl->fd = std::move(sock);
  impl->identity = identity;
  impl->psk.assign(psk.begin(), psk.end());
  impl->server = server;
  impl->options = options;
  return impl;
}

void TlsStream::Impl::setUp() {
  if (psk.size() < kMinPskBytes || psk.size() > kMaxPskBytes) {
    fail(ErrorKind::InvalidInput, "tls: pre-shared key must be " + std::to_string(kMinPskBytes) + ".." +
                                      std::to_string(kMaxPskBytes) + " bytes, got " + std::to_string(psk.size()));
  }
  if (identity.empty()) fail(ErrorKind::InvalidInput, "tls: empty PSK identity");
  peer = socketPeerName(fd.get());

  ERR_clear_error();
  ctx.reset(SSL_CTX_new(server ? TLS_server_method() : TLS_client_method()));
  if (!ctx) fail("tls: SSL_CTX_new: " + takeOpenSslErrors());
  SSL_CTX* c = ctx.get();
  if (SSL_CTX_set_min_proto_version(c, TLS1_3_VERSION) != 1 || SSL_CTX_set_max_proto_version(c, TLS1_3_VERSION) != 1 ||
      SSL_CTX_set_ciphersuites(c, kCipherSuite) != 1 || SSL_CTX_set1_groups_list(c, kGroups) != 1) {
    fail("tls: configuring the context: " + takeOpenSslErrors());
  }
  // psk_dhe_ke only: without SSL_OP_ALLOW_NO_DHE_KEX OpenSSL neither offers
  // nor accepts plain psk_ke, so every session has an ephemeral key exchange.
  SSL_CTX_clear_options(c, SSL_OP_ALLOW_NO_DHE_KEX);
  // The key is for one connection; no tickets to resume with.
  SSL_CTX_set_options(c, SSL_OP_NO_TICKET);
  SSL_CTX_set_num_tickets(c, 0);
  // Client: with no trust anchors loaded, VERIFY_PEER makes any
  // certificate-based handshake fail, so only our PSK can authenticate the
  // server. The server has no certificate, so it can only do PSK; it keeps
  // VERIFY_NONE, since VERIFY_PEER there would also demand a session id
  // context for the PSK "resumption" (internal error otherwise).
  if (!server) SSL_CTX_set_verify(c, SSL_VERIFY_PEER, nullptr);
  // No read-ahead: measured here it costs more in buffer compaction
  // (memmove) than it saves in recv() calls.
  if (server) {
    SSL_CTX_set_psk_find_session_callback(c, findPskSession);
  } else {
    SSL_CTX_set_psk_use_session_callback(c, usePskSession);
  }

  ssl.reset(SSL_new(c));
  if (!ssl) fail("tls: SSL_new: " + takeOpenSslErrors());
  SSL_set_app_data(ssl.get(), this);
  if (server) {
    SSL_set_accept_state(ssl.get());
  } else {
    SSL_set_connect_state(ssl.get());
  }
  bio.fd = fd.get();
  bio.ioTimeout = options.ioTimeout;
  bio.stop = options.stop;
  BIO* b = BIO_new(socketBioMethod());
  if (b == nullptr) fail("tls: BIO_new: " + takeOpenSslErrors());
  BIO_set_data(b, &bio);
  SSL_set_bio(ssl.get(), b, b);  // ssl owns the BIO (one reference for both directions).
}

bool TlsStream::Impl::step() {
  ERR_clear_error();
  bio.lastErrno = 0;
  bio.timedOut = false;
  int ret = SSL_do_handshake(ssl.get());
  if (ret != 1) {
    int error = SSL_get_error(ssl.get(), ret);
    if (bio.nonBlocking && (error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE)) return false;
    failHandshake(ret);
  }
  // Belt and braces: the callbacks and VERIFY_PEER already rule out anything
  // but our PSK, but a handshake that did not use it must never carry data.
  if (SSL_session_reused(ssl.get()) != 1) {
    fail(ErrorKind::InvalidInput, "tls: handshake with " + peer + " completed without the pre-shared key");
  }
  return true;
}

short TlsStream::Impl::wantEvents() const { return SSL_want_write(ssl.get()) ? POLLOUT : POLLIN; }

void TlsStream::Impl::failHandshake(int ret) {
  if (bio.stopped) failStopped("handshake");
  int error = SSL_get_error(ssl.get(), ret);
  std::string details = takeOpenSslErrors();
  std::string hint;
  if (offeredIdentity) {
    hint = " (client offered PSK identity `" + *offeredIdentity + "`, expected `" + identity + "`)";
  } else if (error == SSL_ERROR_SSL) {
    hint = " (wrong pre-shared key or identity?)";
  }
  ErrorKind kind = ErrorKind::InvalidInput;
  if (error == SSL_ERROR_SYSCALL || error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE) {
    kind = ErrorKind::Disconnected;
    if (details.empty()) {
      bool handshakeDeadline = bio.deadline && Clock::now() >= *bio.deadline;
      details = error != SSL_ERROR_SYSCALL
                    ? "timed out after " + describeTimeout(handshakeDeadline ? options.handshakeTimeout
                                                                             : options.ioTimeout)
                : bio.lastErrno != 0 ? std::strerror(bio.lastErrno)
                                     : "connection closed by peer";
    }
  }
  fail(kind, "tls: handshake with " + peer + " failed: " + details + hint);
}

void TlsStream::Impl::handshake() {
  setUp();
  if (options.handshakeTimeout.count() > 0) bio.deadline = Clock::now() + options.handshakeTimeout;
  step();
  becomeStream();
}

void TlsStream::Impl::becomeStream() {
  bio.nonBlocking = false;
  bio.deadline.reset();
}

TlsStream::TlsStream(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
TlsStream::TlsStream(TlsStream&&) noexcept = default;
TlsStream& TlsStream::operator=(TlsStream&&) noexcept = default;
// Deliberately no close_notify here: a stream destroyed without finish() (an
// exception unwinding the sender) must look truncated to the receiver, not
// complete.
TlsStream::~TlsStream() = default;

TlsStream TlsStream::connect(Fd sock, const std::string& pskIdentity, std::span<const uint8_t> psk,
                             std::chrono::milliseconds ioTimeout) {
  return connect(std::move(sock), pskIdentity, psk, TlsOptions{ioTimeout, ioTimeout, nullptr});
}

TlsStream TlsStream::connect(Fd sock, const std::string& pskIdentity, std::span<const uint8_t> psk,
                             const TlsOptions& options) {
  auto impl = Impl::make(std::move(sock), pskIdentity, psk, false, options);
  impl->handshake();
  return TlsStream(std::move(impl));
}

TlsStream TlsStream::accept(Fd sock, const std::string& pskIdentity, std::span<const uint8_t> psk,
                            std::chrono::milliseconds ioTimeout) {
  return accept(std::move(sock), pskIdentity, psk, TlsOptions{ioTimeout, ioTimeout, nullptr});
}

TlsStream TlsStream::accept(Fd sock, const std::string& pskIdentity, std::span<const uint8_t> psk,
                            const TlsOptions& options) {
  auto impl = Impl::make(std::move(sock), pskIdentity, psk, true, options);
  impl->handshake();
  return TlsStream(std::move(impl));
}

TlsHandshake TlsHandshake::accept(Fd sock, const std::string& pskIdentity, std::span<const uint8_t> psk,
                                  const TlsOptions& options) {
  auto impl = TlsStream::Impl::make(std::move(sock), pskIdentity, psk, true, options);
  impl->setUp();
  impl->bio.nonBlocking = true;
  return TlsHandshake(std::move(impl));
}

TlsHandshake::TlsHandshake(std::unique_ptr<TlsStream::Impl> impl) : impl_(std::move(impl)) {}
TlsHandshake::TlsHandshake(TlsHandshake&&) noexcept = default;
TlsHandshake& TlsHandshake::operator=(TlsHandshake&&) noexcept = default;
TlsHandshake::~TlsHandshake() = default;

short TlsHandshake::advance() { return impl_->step() ? 0 : impl_->wantEvents(); }

TlsStream TlsHandshake::finish() && {
  impl_->becomeStream();
  return TlsStream(std::move(impl_));
}

int TlsHandshake::fd() const { return impl_->fd.get(); }
const std::string& TlsHandshake::peer() const { return impl_->peer; }

size_t TlsStream::read(void* buffer, size_t size) {
  if (impl_->readEof || size == 0) return 0;
  ERR_clear_error();
  impl_->bio.lastErrno = 0;
  impl_->bio.timedOut = false;
  size_t n = 0;
  int ret = SSL_read_ex(impl_->ssl.get(), buffer, size, &n);
  if (ret == 1) return n;
  if (SSL_get_error(impl_->ssl.get(), ret) == SSL_ERROR_ZERO_RETURN) {
    impl_->readEof = true;
    return 0;
  }
  impl_->failIo("read", ret);
}

size_t TlsStream::readFully(void* buffer, size_t size) {
  size_t got = 0;
  while (got < size) {
    size_t n = read(static_cast<char*>(buffer) + got, size - got);
    if (n == 0) break;
    got += n;
  }
  return got;
}

void TlsStream::write(const void* data, size_t size) {
  if (impl_->writeShut) fail("tls: write to " + impl_->peer + " after close_notify");
  auto* p = static_cast<const char*>(data);
  while (size > 0) {
    ERR_clear_error();
    impl_->bio.lastErrno = 0;
    impl_->bio.timedOut = false;
    size_t n = 0;
    int ret = SSL_write_ex(impl_->ssl.get(), p, size, &n);
    if (ret != 1) impl_->failIo("write", ret);
    p += n;
    size -= n;
  }
}

void TlsStream::shutdownWrite() {
  if (impl_->writeShut) return;
  ERR_clear_error();
  impl_->bio.lastErrno = 0;
  impl_->bio.timedOut = false;
  // 0: close_notify sent, the peer's not seen yet; 1: both sent. Either way
  // our direction is closed and reads continue.
  int ret = SSL_shutdown(impl_->ssl.get());
  if (ret < 0) impl_->failIo("close_notify", ret);
  impl_->writeShut = true;
}

size_t TlsStream::pending() const {
  if (impl_->readEof) return 0;
  int n = SSL_pending(impl_->ssl.get());
  return n > 0 ? static_cast<size_t>(n) : 0;
}

const std::string& TlsStream::peer() const { return impl_->peer; }
int TlsStream::fd() const { return impl_->fd.get(); }

}  // namespace migrate
