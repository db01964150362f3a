#include "agent/page-relay.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <deque>
#include <map>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "agent/capacity.h"
#include "agent/container-cgroup.h"
#include "agent/criu-pagemap.h"
#include "agent/page-answerer.h"
#include "agent/page-server-protocol.h"
#include "agent/userfaultfd-copies.h"
#include "common/error.h"
#include "common/files.h"
#include "common/log.h"
#include "common/subprocess.h"
#include "common/syscall.h"
#include "common/syscalls.h"
#include "net/data-listener.h"
#include "net/tls-stream.h"

namespace migrate {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace {

// A cut the kernel does not see (the fabric drops everything) surfaces as a
// write that makes no progress: after this long the relay calls the channel
// cut and reconnects. Longer than a brief outage TCP rides out by itself.
constexpr milliseconds kPeerIoTimeout{20000};
constexpr milliseconds kReconnectEvery{1000};
constexpr milliseconds kConnectTimeout{3000};
constexpr milliseconds kPollSlice{200};
constexpr milliseconds kPublishEvery{250};
constexpr milliseconds kScanEvery{20};
// How often the target relay looks at the container's cgroup (a read of
// cgroup.procs in every hierarchy, a dozen files here): not on every chunk,
// which held the pages phase of 1 GiB at 31 s instead of 11.
constexpr milliseconds kWatchEvery{200};
// A frame of bulk answers (page-server-protocol.h: PageChannel), and how
// much unsent data the source's socket holds at most.
constexpr size_t kBulkFrameBytes = 64 << 10;
constexpr int kNotSentLowWater = 128 << 10;
// Bulk requests at CRIU at once (page-server-protocol.h: PageChannel), and
// reads of CRIU's answers per turn of the source relay's loop (of 128 KiB).
constexpr int kBulkAtCriu = 2;
constexpr size_t kCriuReadsPerTurn = 16;
// lazy-pages' priority (TargetRelay::startLazyPages says why).
constexpr int kLazyPagesNice = 19;
// Killed processes leave their cgroup only once the last of them is reaped:
// lazy-pages, which ends as soon as their userfaultfds close, can be quicker
// (seen under load). How long an ended lazy-pages waits for that before it
// counts as a failure of its own.
constexpr milliseconds kDyingGrace{5000};

std::atomic<bool> rekeyAsked{false};
std::atomic<bool> stopAsked{false};

void onSignal(int signal) {
  if (signal == SIGUSR1) rekeyAsked = true;
  if (signal == SIGTERM || signal == SIGINT) stopAsked = true;
}

int64_t wallMs() {
  return std::chrono::duration_cast<milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// Requests are small and each waits for its answer: no Nagle delay. A cut
// link is noticed by keepalive (idle) or the user timeout (unacknowledged
// data), not after TCP's default quarter of an hour.
void tunePeerSocket(int fd) {
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  ::setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
  int idle = 5, interval = 2, count = 5;
  ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
  ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof interval);
  ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof count);
  unsigned userTimeout = static_cast<unsigned>(kPeerIoTimeout.count());
  ::setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &userTimeout, sizeof userTimeout);
}

void writeAll(int fd, const char* data, size_t size, const char* what) {
  while (size > 0) {
    ssize_t n = ::send(fd, data, size, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail(ErrorKind::Disconnected, std::string("write to ") + what + ": " + strerror(errno));
    data += n;
    size -= static_cast<size_t>(n);
  }
}

// The loopback hop too: each answer ends in a short segment, which Nagle
// would hold back until the previous one is acknowledged (40 ms).
void noDelay(int fd) {
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

bool readable(short revents) { return (revents & (POLLIN | POLLHUP | POLLERR)) != 0; }

// What both roles share: the spec, the published status, the peer stream.
class Relay {
 public:
  Relay(fs::path dir, PageRelaySpec spec) : dir_(std::move(dir)), spec_(std::move(spec)) {
    status_.pid = ::getpid();
  }

 protected:
  void publish(bool force = false) {
    auto now = Clock::now();
    if (!force && now - lastPublish_ < kPublishEvery) return;
    lastPublish_ = now;
    try {
      writeRelayStatus(dir_, status_);
    } catch (const std::exception& e) {
      logWarn(std::string("page relay: status: ") + e.what());
    }
  }

  void setState(RelayState state, std::string error = {}) {
    if (state == RelayState::Cut && status_.state != RelayState::Cut) status_.cutSinceMs = wallMs();
    if (state != RelayState::Cut) status_.cutSinceMs = 0;
    if (state != status_.state || error != status_.error) {
      logInfo("page relay " + spec_.migrationId + ": " + relayStateName(state) + (error.empty() ? "" : ": " + error));
    }
    status_.state = state;
    status_.error = std::move(error);
    publish(true);
  }

  void takeFreshKey() {
    if (!rekeyAsked.exchange(false)) return;
    try {
      if (auto key = readRelayKey(dir_)) {
        spec_.psk = std::move(*key);
        logInfo("page relay " + spec_.migrationId + ": a fresh key came");
      }
    } catch (const std::exception& e) {
      logWarn(std::string("page relay: key: ") + e.what());
    }
  }

  void dropPeer(const std::string& why) {
    if (!peer_) return;
    ::shutdown(peer_->fd(), SHUT_RDWR);
    peer_.reset();
    setState(RelayState::Cut, "page channel cut: " + why);
  }

  TlsOptions peerOptions() const {
    TlsOptions o;
    o.ioTimeout = kPeerIoTimeout;
    o.handshakeTimeout = kConnectTimeout;
    o.stop = &stopAsked;
    return o;
  }

  fs::path dir_;
  PageRelaySpec spec_;
  PageRelayStatus status_;
  std::optional<TlsStream> peer_;
  Clock::time_point lastPublish_{};
  std::vector<char> buffer_ = std::vector<char>(1 << 17);
};

// ---------------------------------------------------------------------------
// Source: CRIU's page server <-> the target's relay.

class SourceRelay : Relay {
 public:
  using Relay::Relay;

  int run() {
    criu_ = connectTcp("127.0.0.1", spec_.criuPort, kConnectTimeout);
    noDelay(criu_.get());
    status_.localFd = criu_.get();
    publish(true);
    auto nextAttempt = Clock::now();
    for (;;) {
      if (stopAsked) return giveBack();
      takeFreshKey();
      if (!peer_ && Clock::now() >= nextAttempt) {
        nextAttempt = Clock::now() + kReconnectEvery;
        connectPeer();
      }
      bool peerPending = peer_ && peer_->pending() > 0;
      bool bulkPending = peer_ && !out_[channelIndex(PageChannel::Bulk)].empty();
      pollfd fds[2] = {{criu_.get(), POLLIN, 0}, {peer_ ? peer_->fd() : -1, POLLIN, 0}};
      if (!peerPending) {
        // With answers to send, only a look: they go out between reads.
        int n = ::poll(fds, 2, bulkPending ? 0 : static_cast<int>(kPollSlice.count()));
        if (n < 0 && errno != EINTR) fail(std::string("poll: ") + strerror(errno));
        if (n <= 0 && !bulkPending) {
          publish();
          continue;
        }
      }
      if (peer_ && (peerPending || readable(fds[1].revents))) {
        if (auto code = fromPeer()) return *code;
      }
      if (readable(fds[0].revents)) {
        if (auto code = fromCriu()) return *code;
      }
      toPeer();
      publish();
    }
  }

 private:
  void connectPeer() {
    try {
      Fd sock = connectTcp(spec_.targetAddress, spec_.targetPort, kConnectTimeout);
      tunePeerSocket(sock.get());
      if (::setsockopt(sock.get(), IPPROTO_TCP, TCP_NOTSENT_LOWAT, &kNotSentLowWater, sizeof kNotSentLowWater) != 0) {
        logWarn("page relay " + spec_.migrationId + ": TCP_NOTSENT_LOWAT: " + strerror(errno));
      }
      peer_.emplace(TlsStream::connect(std::move(sock), spec_.migrationId, spec_.psk, peerOptions()));
      if (generation_++ > 0) ++status_.reconnects;
      requests_ = PageRequestSplitter();
      for (auto& out : out_) out.clear();
      bulkHeld_.clear();
      closeWanted_ = false;
      setState(RelayState::Flowing);
    } catch (const std::exception& e) {
      if (status_.state != RelayState::Cut) setState(RelayState::Cut, std::string("connecting: ") + e.what());
      status_.error = std::string("page channel cut; reconnecting: ") + e.what();
    }
  }

  // Requests from lazy-pages on the target, passed to CRIU.
  std::optional<int> fromPeer() {
    size_t n;
    try {
      n = peer_->read(buffer_.data(), buffer_.size());
    } catch (const std::exception& e) {
      dropPeer(e.what());
      return std::nullopt;
    }
    if (n == 0) {
      // A clean close means every page went only once CRIU answered
      // lazy-pages' CLOSE; else it would be CRIU's cue to kill the
      // container, the only whole copy of its memory.
      if (!closeAnswered_) {
        dropPeer("the target closed the channel before lazy-pages' CLOSE");
        return std::nullopt;
      }
      // The target's relay closed cleanly: lazy-pages has every page. CRIU
      // answered its CLOSE and waits for our end of file to finish.
      ::shutdown(criu_.get(), SHUT_WR);
      drainCriu();
      try {
        peer_->shutdownWrite();
      } catch (const std::exception&) {
        // The target has all it needs.
      }
      setState(RelayState::Done);
      return 0;
    }
    try {
      for (auto& request : requests_.feed(buffer_.data(), n)) {
        if (request.command() == PageCommand::GaveUp) return targetGaveUp();
        if (request.command() == PageCommand::Close) {
          closeAsked(request);
        } else if (request.channel() == PageChannel::Bulk) {
          bulkHeld_.push_back(std::move(request));
        } else {
          toCriu(request);
        }
      }
      bulkToCriu();
    } catch (const Error& e) {
      if (e.kind() == ErrorKind::InvalidInput) {
        dropPeer(std::string("the target sent what lazy-pages does not: ") + e.what());
        return std::nullopt;
      }
      setState(RelayState::Failed, std::string("CRIU's page server: ") + e.what());
      return 2;
    }
    return std::nullopt;
  }

  // CRIU serves one request at a time, in order: an urgent one goes at
  // once, ahead of bulk ones held here, kBulkAtCriu of which are at CRIU at
  // most, so that a fault's answer waits behind little there too.
  void toCriu(const PageRequest& request) {
    if (closeForwarded_) {
      // CRIU reads nothing after its CLOSE (it would fail the dump), and
      // lazy-pages asks for nothing after it: a stray request goes unanswered.
      logWarn("page relay " + spec_.migrationId + ": a request after CLOSE, not passed to CRIU");
      return;
    }
    uint64_t tag = generation_ << 1 | channelIndex(request.channel());
    PageRequest forCriu = request.onChannel(PageChannel::Urgent);
    writeAll(criu_.get(), forCriu.raw.data(), forCriu.raw.size(), "CRIU's page server");
    answers_.expect(std::move(forCriu), tag);
    if (request.channel() == PageChannel::Bulk) ++bulkAtCriu_;
  }

  void bulkToCriu() {
    while (bulkAtCriu_ < kBulkAtCriu && !bulkHeld_.empty()) {
      toCriu(bulkHeld_.front());
      bulkHeld_.pop_front();
    }
  }

  // lazy-pages' CLOSE: what is held is not needed any more (lazy-pages has
  // every page) and must not follow it. Asked again on a new connection, it
  // is answered here: CRIU saw it once.
  void closeAsked(const PageRequest& request) {
    bulkHeld_.clear();
    if (!closeForwarded_) {
      toCriu(request);
      closeForwarded_ = true;
    } else if (closeAnswered_) {
      out_[channelIndex(PageChannel::Urgent)] += closeAnswer_;  // its answer went to a connection that broke
    } else {
      closeWanted_ = true;  // its answer is on its way, to the old connection
    }
  }

  // CRIU's answers: to the target if asked on the current connection, else
  // read and dropped (the target asks again). Read until nothing is left:
  // an urgent answer may be behind bulk ones.
  std::optional<int> fromCriu() {
    for (size_t turn = 0; turn < kCriuReadsPerTurn; ++turn) {
      ssize_t n = ::recv(criu_.get(), buffer_.data(), buffer_.size(), MSG_DONTWAIT);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
      if (n <= 0) {
        setState(RelayState::Failed, n == 0 ? "CRIU's page server closed the connection (its pages are gone)"
                                            : std::string("reading CRIU's page server: ") + strerror(errno));
        return 2;
      }
      try {
        answers_.feed(buffer_.data(), static_cast<size_t>(n), [&](const PageAnswerTracker::Pending& p,
                                                                 const char* data, size_t size) {
          bool complete = p.total != 0 && p.received == p.total;
          if (p.request.command() == PageCommand::Close) {
            closeAnswer_.append(data, size);
            if (complete) closeAnswered_ = true;
          }
          size_t channel = p.tag & 1;  // the tag: generation, then channelIndex
          if (complete && channel == channelIndex(PageChannel::Bulk)) --bulkAtCriu_;
          if (!peer_ || p.tag >> 1 != generation_) {
            // A CLOSE asked again on this connection gets the answer here.
            if (complete && closeWanted_ && p.request.command() == PageCommand::Close) {
              out_[channelIndex(PageChannel::Urgent)] += closeAnswer_;
              closeWanted_ = false;
            }
            return;
          }
          out_[channel].append(data, size);
        });
      } catch (const Error& e) {
        setState(RelayState::Failed, std::string("CRIU's page server answered out of protocol: ") + e.what());
        return 2;
      }
    }
    bulkToCriu();
    return std::nullopt;
  }

  // The target's relay cannot go on: said at once (the source agent reports
  // it), CRIU kept as it is until the agent decides (SIGTERM: give back).
  int targetGaveUp() {
    dropPeer("the target's relay gave up");
    setState(RelayState::Failed, "the target's page relay gave up (its status says why); the container stays "
                                 "frozen here");
    while (!stopAsked) std::this_thread::sleep_for(kPollSlice);
    return giveBack();
  }

  // Every urgent answer, then one frame of bulk ones: between frames CRIU
  // is read again, so a fault's answer waits behind one frame at most (and
  // what the socket holds, kept small: TCP_NOTSENT_LOWAT).
  void toPeer() {
    if (!peer_) return;
    try {
      sendFrames(PageChannel::Urgent, SIZE_MAX);
      sendFrames(PageChannel::Bulk, kBulkFrameBytes);
    } catch (const std::exception& e) {
      dropPeer(e.what());
    }
  }

  void sendFrames(PageChannel channel, size_t most) {
    std::string& out = out_[channelIndex(channel)];
    size_t sent = 0;
    while (sent < out.size() && sent < most) {
      size_t n = std::min({out.size() - sent, kBulkFrameBytes, most - sent});
      std::string frame = pageFrameHeader(channel, n);
      frame.append(out, sent, n);
      peer_->write(frame.data(), frame.size());
      status_.bytesPages += n;
      sent += n;
    }
    out.erase(0, sent);
  }

  // After our end of file CRIU closes its side; wait for that a moment so
  // that its dump ends cleanly before we go.
  void drainCriu() {
    for (auto deadline = Clock::now() + std::chrono::seconds(5); Clock::now() < deadline;) {
      pollfd fd{criu_.get(), POLLIN, 0};
      if (::poll(&fd, 1, 200) <= 0) continue;
      ssize_t n = ::read(criu_.get(), buffer_.data(), buffer_.size());
      if (n <= 0) return;
    }
  }

  // Bytes CRIU's page server cannot parse make it fail, and a failed lazy
  // dump resumes the container it froze; a clean end of file instead would
  // tell it every page went, and it would kill the container.
  int giveBack() {
    char garbage[64];
    std::memset(garbage, 0xff, sizeof garbage);
    (void)::send(criu_.get(), garbage, sizeof garbage, MSG_NOSIGNAL);
    linger reset{1, 0};
    ::setsockopt(criu_.get(), SOL_SOCKET, SO_LINGER, &reset, sizeof reset);
    criu_.reset();
    setState(RelayState::Failed, "stopped by the agent: CRIU gives the container back to this host");
    return 3;
  }

  Fd criu_;
  std::string out_[kPageChannels];  // answers for the peer, by channelIndex
  std::deque<PageRequest> bulkHeld_;
  int bulkAtCriu_ = 0;
  bool closeForwarded_ = false;
  bool closeWanted_ = false;  // asked again on this connection, answered to an old one
  std::string closeAnswer_;
  bool closeAnswered_ = false;
  uint64_t generation_ = 0;
  PageRequestSplitter requests_;
  PageAnswerTracker answers_;
};

// ---------------------------------------------------------------------------
// Target: lazy-pages <-> the source's relay.

class TargetRelay : Relay {
 public:
  using Relay::Relay;

  int run() {
    listener_.emplace(Fd(3), spec_.listenAddress);
    DataListener local("127.0.0.1");
    startLazyPages(local.port());
    for (;;) {
      if (stopAsked) return stop();
      takeFreshKey();
      if (!status_.lazyPagesReady && fs::exists(spec_.lazyPagesSocket)) {
        status_.lazyPagesReady = true;
        publish(true);
      }
      holdUserfaultfds();
      if (auto code = lazyPages_->poll()) return lazyPagesEnded(*code);
      // Restored (the agent says so), then all gone: its pages will never be
      // asked for. Not before: mid-restore the cgroup may not hold them yet.
      if (Clock::now() - lastWatch_ >= kWatchEvery) {
        lastWatch_ = Clock::now();
        if (!restored_ && fs::exists(dir_ / "restored")) restored_ = true;
        if (restored_ && !containerPopulated()) return processesGone();
      }
      bool peerPending = peer_ && peer_->pending() > 0;
      pollfd fds[4] = {{listener_->fd(), POLLIN, 0},
                       {lazyConn_ ? -1 : local.fd(), POLLIN, 0},
                       {lazyConn_ && !lazyClosed_ ? lazyConn_.get() : -1, POLLIN, 0},
                       {peer_ ? peer_->fd() : -1, POLLIN, 0}};
      if (!peerPending) {
        int n = ::poll(fds, 4, static_cast<int>(kPollSlice.count()));
        if (n < 0 && errno != EINTR) fail(std::string("poll: ") + strerror(errno));
        if (n <= 0) {
          publish();
          continue;
        }
      }
      if (readable(fds[0].revents)) acceptPeer();
      if (readable(fds[1].revents)) {
        lazyConn_ = local.acceptOne(milliseconds(100));
        noDelay(lazyConn_.get());
        status_.localFd = lazyConn_.get();
        publish(true);
      }
      if (readable(fds[2].revents)) fromLazyPages();
      if (peer_ && (peerPending || readable(fds[3].revents))) fromPeer();
      status_.outstanding = static_cast<uint32_t>(pages_.outstanding());
      publish();
    }
  }

 private:
  void startLazyPages(uint16_t port) {
    std::vector<std::string> args = spec_.lazyPagesArgs;
    for (auto& a : args) {
      if (a == "@PORT@") a = std::to_string(port);
    }
    Fd out(SYSCALL(::open((dir_ / "lazy-pages.out").c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600), "open",
                   (dir_ / "lazy-pages.out").string()));
    auto options = SubprocessOptions::of(args);
    options.stdoutFd = out.get();
    options.stderrFd = out.get();
    lazyPages_.emplace(options);
    status_.lazyPagesPid = lazyPages_->pid();
    // Once the restore is done lazy-pages polls without sleeping, a whole
    // CPU, while it waits for answers (uffd.c: handle_requests, timeout 0).
    // Niced, it takes what the restored program, its clients and the relays
    // leave, which is mostly what it waits on (measured: docs/benchmarks.md);
    // under load from others on the host it gets less than its fair share.
    if (::setpriority(PRIO_PROCESS, static_cast<id_t>(lazyPages_->pid()), kLazyPagesNice) != 0) {
      logWarn("page relay " + spec_.migrationId + ": setpriority of lazy-pages: " + strerror(errno));
    }
    publish(true);
  }

  // Every userfaultfd lazy-pages received from the restored processes, held
  // here too (userfaultfd-copies.h). A scan of lazy-pages' fds is cheap but
  // not free: not for every chunk.
  void holdUserfaultfds() {
    auto now = Clock::now();
    if (now - lastScan_ < kScanEvery) return;
    lastScan_ = now;
    uint32_t held = static_cast<uint32_t>(uffds_.takeFrom(lazyPages_->pid()));
    if (held != status_.uffdsHeld) {
      status_.uffdsHeld = held;
      publish(true);
    }
  }

  void acceptPeer() {
    try {
      TlsAcceptOptions options;
      options.ioTimeout = kPeerIoTimeout;
      auto stream = listener_->acceptTls(spec_.migrationId, spec_.psk, kConnectTimeout, stopAsked, options);
      tunePeerSocket(stream.fd());
      if (peer_) dropPeer("the source connected again");
      if (connected_++ > 0) ++status_.reconnects;
      peer_.emplace(std::move(stream));
      frames_ = PageFrameSplitter();
      askAgain();
      setState(RelayState::Flowing);
    } catch (const std::exception& e) {
      logInfo("page relay " + spec_.migrationId + ": a connection that did not prove the key: " + e.what());
    }
  }

  // A new connection: every unanswered request goes again (PageAnswerer).
  void askAgain() {
    pages_.reconnected();
    if (pages_.outstanding() > 0) {
      logInfo("page relay " + spec_.migrationId + ": asking again for " + std::to_string(pages_.outstanding()) +
              " page request(s)");
    }
    sendToSource();
  }

  // What lazy-pages' requests left for the source; nothing while cut (the
  // next connection asks again for everything unanswered).
  void sendToSource() {
    std::string out = pages_.takeForSource();
    if (!peer_ || out.empty()) return;
    try {
      peer_->write(out.data(), out.size());
    } catch (const std::exception& e) {
      dropPeer(e.what());
    }
  }

  void sendToLazyPages() {
    std::string out = pages_.takeForLazyPages();
    if (out.empty() || !lazyConn_) return;
    writeAll(lazyConn_.get(), out.data(), out.size(), "lazy-pages");
    status_.bytesPages += out.size();
  }

  void fromLazyPages() {
    ssize_t n = ::read(lazyConn_.get(), buffer_.data(), buffer_.size());
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) return;
    if (n <= 0) {
      // It closes once it has every page, or when it fails: its exit
      // status tells which (lazyPagesEnded).
      lazyClosed_ = true;
      return;
    }
    knowLazyPages();
    try {
      for (auto& request : requests_.feed(buffer_.data(), static_cast<size_t>(n))) {
        pages_.fromLazyPages(std::move(request));
      }
      sendToLazyPages();
    } catch (const std::exception& e) {
      logError("page relay " + spec_.migrationId + ": lazy-pages: " + e.what());
      lazyClosed_ = true;
      ::shutdown(lazyConn_.get(), SHUT_RDWR);
      return;
    }
    sendToSource();
  }

  // Once, at lazy-pages' first request (the restore has the images then):
  // which pages the source holds, so that they can be asked for ahead.
  void knowLazyPages() {
    if (std::exchange(lazyPagesKnown_, true) || spec_.imagesDir.empty()) return;
    try {
      // All of it may be here at once: no more than this host has free.
      uint64_t free = HostCapacity::measure(spec_.imagesDir).memAvailable / kPageBytes;
      if (!pages_.knowLazyPages(readLazyPages(spec_.imagesDir), free)) {
        logWarn("page relay " + spec_.migrationId + ": no asking ahead: the checkpoint's lazy pages exceed the " +
                std::to_string(free >> 8) + " MiB available here");
      }
    } catch (const std::exception& e) {
      logWarn("page relay " + spec_.migrationId + ": no asking ahead: " + e.what());
    }
  }

  void fromPeer() {
    size_t n;
    try {
      n = peer_->read(buffer_.data(), buffer_.size());
    } catch (const std::exception& e) {
      dropPeer(e.what());
      return;
    }
    if (n == 0) {
      dropPeer(pages_.closeAnswered() ? "the source closed after the last page" : "the source closed the channel");
      return;
    }
    try {
      frames_.feed(buffer_.data(), n, [&](PageChannel channel, const char* data, size_t size) {
        pages_.fromSource(channel, data, size);
      });
      sendToLazyPages();
      sendToSource();  // answers make requests: asking ahead, a short answer's rest
    } catch (const Error& e) {
      if (e.kind() == ErrorKind::InvalidInput) {
        dropPeer(std::string("the source answered out of protocol: ") + e.what());
      } else {
        // lazy-pages is gone: its exit is handled on the next round.
        lazyClosed_ = true;
      }
    }
  }

  int lazyPagesEnded(int code) {
    if (code == 0 && pages_.closeAnswered()) {
      logInfo("page relay " + spec_.migrationId + ": every page in, " + std::to_string(pages_.pagesFromCache()) +
              " of them kept here before lazy-pages asked, " + std::to_string(pages_.pagesAskedAhead()) +
              " asked for ahead of it");
      if (peer_) {
        try {
          peer_->shutdownWrite();
          // Wait for the source's close, so it never sees a cut.
          std::vector<char> sink(4096);
          while (peer_->read(sink.data(), sink.size()) > 0) {
          }
        } catch (const std::exception&) {
          // The source learns it from its own end of file or not at all:
          // every page is here either way.
        }
      }
      setState(RelayState::Done);
      return 0;
    }
    // Its processes going makes lazy-pages end well (status 0) before they
    // are all reaped: wait for them to be gone. Meanwhile a fault on a page
    // that never came stays blocked on the userfaultfds held here.
    if (restored_ && (code == 0 ? dyingWithin(kDyingGrace) : !containerPopulated())) return processesGone();
    // The restored processes may still fault on a page that never came:
    // freeze them before anything else. The faults stay blocked meanwhile
    // on the userfaultfds held here.
    bool frozen = freezeContainer();
    status_.containerFrozen = frozen;
    return giveUp("criu lazy-pages exited with status " + std::to_string(code) + " with " +
                  std::to_string(pages_.outstanding()) + " page request(s) unanswered" +
                  (frozen ? "; the container is frozen" : "; freezing the container failed") + " (" +
                  (dir_ / "lazy-pages.out").string() + ")");
  }

  int processesGone() {
    return giveUp("the container's processes on this host are gone (killed, or exited) before every page arrived (" +
                  std::to_string(pages_.outstanding()) + " page request(s) unanswered); the source's copy is the "
                  "only whole one");
  }

  // Cannot go on: the source is told by a channel that stays cut (never a
  // clean close, which would tell it every page went), and the relay waits
  // for the agent, holding what it holds.
  int giveUp(const std::string& why) {
    if (peer_) {
      try {
        auto notice = relayGaveUpNotice();
        peer_->write(notice.raw.data(), notice.raw.size());
      } catch (const std::exception&) {
        // The source learns it from the cut, later.
      }
      ::shutdown(peer_->fd(), SHUT_RDWR);
      peer_.reset();
    }
    listener_.reset();
    setState(RelayState::Failed, why);
    while (!stopAsked) std::this_thread::sleep_for(kPollSlice);
    return 2;
  }

  // Whether the container still has processes, in any hierarchy.
  bool containerPopulated() const { return spec_.cgroup.empty() || !cgroupMembers(spec_.cgroup).empty(); }

  // Whether the container's processes are all gone within `grace`.
  bool dyingWithin(milliseconds grace) const {
    if (spec_.cgroup.empty()) return false;
    auto deadline = Clock::now() + grace;
    while (containerPopulated()) {
      if (Clock::now() >= deadline || stopAsked) return false;
      std::this_thread::sleep_for(kScanEvery);
    }
    return true;
  }

  bool freezeContainer() { return freezeCgroup(spec_.cgroup); }

  int stop() {
    if (lazyPages_ && !lazyPages_->poll()) {
      lazyPages_->kill(SIGKILL);
      lazyPages_->wait();
    }
    setState(status_.state == RelayState::Done ? RelayState::Done : RelayState::Failed, "stopped by the agent");
    return 3;
  }

  std::optional<DataListener> listener_;
  std::optional<Subprocess> lazyPages_;
  Fd lazyConn_;
  bool lazyClosed_ = false;
  bool restored_ = false;  // the agent's restore returned (file `restored`)
  bool lazyPagesKnown_ = false;
  uint64_t connected_ = 0;
  Clock::time_point lastScan_{};
  Clock::time_point lastWatch_{};
  UserfaultfdCopies uffds_;
  PageRequestSplitter requests_;
  PageFrameSplitter frames_;
  PageAnswerer pages_;
};

}  // namespace

int runPageRelay(const fs::path& dir) {
  struct sigaction action {};
  action.sa_handler = onSignal;
  ::sigemptyset(&action.sa_mask);
  for (int signal : {SIGUSR1, SIGTERM, SIGINT}) ::sigaction(signal, &action, nullptr);
  ::signal(SIGPIPE, SIG_IGN);
  PageRelaySpec spec = readRelaySpec(dir);
  // Before lazy-pages starts: it is born in the relay's cgroup too.
  if (!spec.relayCgroup.empty() && joinCgroup(spec.relayCgroup) == 0) {
    logWarn("page relay: could not join cgroup " + spec.relayCgroup + " in any hierarchy; it stays in the agent's");
  }
  PageRelayStatus failedStatus;
  failedStatus.pid = ::getpid();
  try {
    if (spec.role == RelayRole::Source) return SourceRelay(dir, std::move(spec)).run();
    return TargetRelay(dir, std::move(spec)).run();
  } catch (const std::exception& e) {
    failedStatus.state = RelayState::Failed;
    failedStatus.error = e.what();
    logError(std::string("page relay: ") + e.what());
    try {
      writeRelayStatus(dir, failedStatus);
    } catch (const std::exception&) {
    }
    return 2;
  }
}

}  // namespace migrate
