// The receiver's accept against strangers (issue 9): real sockets and real
// OpenSSL over loopback; the "attackers" are plain TCP clients and TLS clients
// with the wrong key, as any host on the fabric could be.
#include "net/data-listener.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <future>
#include <thread>

#include "common/error.h"
#include "common/hash-stream.h"
#include "tests/support/skip.h"

using namespace migrate;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

constexpr auto kTestIoTimeout = 20s;
// Short enough to keep the tests quick, long enough for a loaded machine to
// finish a real handshake.
constexpr auto kTestHandshakeTimeout = 1500ms;

std::vector<uint8_t> keyOf(uint8_t seed) { return std::vector<uint8_t>(32, seed); }

std::vector<uint8_t> noise(size_t size, uint64_t seed) {
  std::vector<uint8_t> out(size);
  for (size_t i = 0; i + 8 <= size; i += 8) {
    seed ^= seed << 13;
    seed ^= seed >> 7;
    seed ^= seed << 17;
    std::memcpy(out.data() + i, &seed, 8);
  }
  return out;
}

double secondsSince(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

// The receiver's side: the authenticated stream, read to close_notify, its
// SHA-256 sent back.
struct Received {
  std::string digest;
  uint64_t bytes = 0;
};

Received receive(TlsStream& tls) {
  TlsInputStream raw(tls);
  Sha256InputStream in(raw);
  std::vector<uint8_t> buffer(1 << 16);
  Received r;
  while (size_t n = in.read(buffer.data(), buffer.size())) r.bytes += n;
  r.digest = in.hexDigest();
  tls.write(r.digest.data(), r.digest.size());
  tls.shutdownWrite();
  return r;
}

// The real sender: `data` over TLS, then the receiver's digest of it.
std::string send(uint16_t port, const std::string& identity, const std::vector<uint8_t>& psk,
                 const std::vector<uint8_t>& data) {
  TlsStream tls = TlsStream::connect(connectTcp("127.0.0.1", port, 5s), identity, psk, kTestIoTimeout);
  tls.write(data.data(), data.size());
  tls.shutdownWrite();
  std::string ack;
  char buffer[128];
  while (size_t n = tls.read(buffer, sizeof buffer)) ack.append(buffer, n);
  return ack;
}

std::string sha256Of(const std::vector<uint8_t>& data) {
  Sha256 hash;
  hash.update(data.data(), data.size());
  return hash.hexDigest();
}

// True once the receiver closed `stranger` (EOF or reset seen, after
// whatever it said last, such as a TLS alert), within `timeout`.
bool closedWithin(const Fd& stranger, std::chrono::milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  for (;;) {
    auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now());
    pollfd p{stranger.get(), POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(std::max<int64_t>(left.count(), 0))) <= 0) return false;
    char buffer[4096];
    ssize_t n = ::recv(stranger.get(), buffer, sizeof buffer, MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno == ECONNRESET)) return true;
  }
}

bool closedNow(const Fd& stranger) { return closedWithin(stranger, 0ms); }

TlsAcceptOptions testOptions() {
  TlsAcceptOptions o;
  o.handshakeTimeout = kTestHandshakeTimeout;
  o.ioTimeout = kTestIoTimeout;
  return o;
}

bool haveIpv6Loopback() {
  Fd fd(::socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in6 address{};
  address.sin6_family = AF_INET6;
  address.sin6_addr = in6addr_loopback;
  return fd && ::bind(fd.get(), reinterpret_cast<sockaddr*>(&address), sizeof address) == 0;
}

}  // namespace

TEST_CASE("acceptTls: a silent stranger connected first neither delays the sender nor survives the bound",
          "[receiver]") {
  DataListener listener("127.0.0.1");
  std::atomic<bool> stop{false};
  auto psk = generatePsk();
  auto data = noise(8 << 20, 7);

  Fd stranger = connectTcp("127.0.0.1", listener.port(), 5s);
  auto start = Clock::now();
  auto receiver = std::async(std::launch::async, [&] {
    TlsStream tls = listener.acceptTls("m-silent", psk, 30s, stop, testOptions());
    return receive(tls);
  });
  // The stranger is the receiver's first connection: it completed its connect
  // before the receiver started, so it is first in the accept queue.
  std::string ack = send(listener.port(), "m-silent", psk, data);
  Received got = receiver.get();
  double took = secondsSince(start);

  CHECK(got.bytes == data.size());
  CHECK(got.digest == sha256Of(data));
  CHECK(ack == got.digest);
  // Not held up by the stranger's handshake bound.
  CHECK(took < std::chrono::duration<double>(kTestHandshakeTimeout).count());
  // The receiver returned with the stranger still pending: dropped then.
  CHECK(closedWithin(stranger, 1s));
}

TEST_CASE("acceptTls: with the default bound a silent stranger is closed after it, not before", "[receiver]") {
  DataListener listener("127.0.0.1");
  std::atomic<bool> stop{false};
  auto psk = generatePsk();
  auto data = noise(1 << 20, 8);

  auto start = Clock::now();
  Fd stranger = connectTcp("127.0.0.1", listener.port(), 5s);
  auto receiver = std::async(std::launch::async, [&] {
    TlsStream tls = listener.acceptTls("m-bound", psk, 30s, stop);
    return receive(tls);
  });
  // The sender comes only after the bound: the receiver is still waiting
  // in acceptTls when the stranger's time is up.
  bool closedEarly = closedWithin(stranger, kTlsHandshakeTimeout - 1s);
  bool closed = closedWithin(stranger, 2s);
  double closedAfter = secondsSince(start);
  CHECK_FALSE(closedEarly);
  CHECK(closed);
  CHECK(closedAfter < std::chrono::duration<double>(kTlsHandshakeTimeout + 2s).count());

  std::string ack = send(listener.port(), "m-bound", psk, data);
  Received got = receiver.get();
  CHECK(got.digest == sha256Of(data));
  CHECK(ack == got.digest);
}

TEST_CASE("acceptTls: garbage, a wrong key and a wrong identity are dropped at once, and the sender after them gets through",
          "[receiver]") {
  DataListener listener("127.0.0.1");
  std::atomic<bool> stop{false};
  auto psk = keyOf(1);
  auto data = noise(4 << 20, 9);
  auto receiver = std::async(std::launch::async, [&] {
    TlsStream tls = listener.acceptTls("m-strangers", psk, 30s, stop, testOptions());
    return receive(tls);
  });

  auto start = Clock::now();
  Fd garbage = connectTcp("127.0.0.1", listener.port(), 5s);
  auto junk = noise(4096, 10);
  std::memcpy(junk.data(), "GET / HTTP/1.1\r\n\r\n", 18);
  REQUIRE(::send(garbage.get(), junk.data(), junk.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(junk.size()));
  // A TLS record header claiming a handshake, then nonsense.
  Fd fakeTls = connectTcp("127.0.0.1", listener.port(), 5s);
  const uint8_t fakeRecord[] = {0x16, 0x03, 0x01, 0x00, 0x08, 0x01, 0x00, 0x00, 0x04, 0xde, 0xad, 0xbe, 0xef};
  REQUIRE(::send(fakeTls.get(), fakeRecord, sizeof fakeRecord, MSG_NOSIGNAL) == sizeof fakeRecord);
  CHECK(closedWithin(garbage, 1s));
  CHECK(closedWithin(fakeTls, 1s));
  CHECK(secondsSince(start) < std::chrono::duration<double>(kTestHandshakeTimeout).count());

  try {
    TlsStream::connect(connectTcp("127.0.0.1", listener.port(), 5s), "m-strangers", keyOf(2), kTestIoTimeout);
    FAIL("a wrong key completed the handshake");
  } catch (const Error& e) {
    INFO(e.what());
    CHECK(e.kind() == ErrorKind::InvalidInput);
  }
  CHECK_THROWS_AS(
      TlsStream::connect(connectTcp("127.0.0.1", listener.port(), 5s), "m-other", psk, kTestIoTimeout), Error);

  std::string ack = send(listener.port(), "m-strangers", psk, data);
  Received got = receiver.get();
  CHECK(got.bytes == data.size());
  CHECK(got.digest == sha256Of(data));
  CHECK(ack == got.digest);
}

TEST_CASE("acceptTls: a stranger connecting at the same time as the sender does not disturb it", "[receiver]") {
  DataListener listener("127.0.0.1");
  std::atomic<bool> stop{false};
  auto psk = generatePsk();
  auto data = noise(16 << 20, 11);
  auto receiver = std::async(std::launch::async, [&] {
    TlsStream tls = listener.acceptTls("m-race", psk, 30s, stop, testOptions());
    return receive(tls);
  });
  // A stranger that trickles a plausible ClientHello start byte by byte
  // while the sender connects and sends. (Connected first: one queued behind
  // the sender would never be accepted by this listener, which outlives it.)
  std::promise<void> strangerConnected;
  auto trickler = std::async(std::launch::async, [&] {
    Fd s = connectTcp("127.0.0.1", listener.port(), 5s);
    strangerConnected.set_value();
    const uint8_t start[] = {0x16, 0x03, 0x01, 0x02, 0x00, 0x01};
    for (uint8_t b : start) {
      if (::send(s.get(), &b, 1, MSG_NOSIGNAL) != 1) break;
      std::this_thread::sleep_for(100ms);
    }
    return closedWithin(s, kTestHandshakeTimeout + 1s);
  });
  strangerConnected.get_future().wait();
  std::string ack = send(listener.port(), "m-race", psk, data);
  Received got = receiver.get();
  CHECK(got.digest == sha256Of(data));
  CHECK(ack == got.digest);
  CHECK(trickler.get());
}

TEST_CASE("acceptTls: a flood of idle connections past the pending limit does not stop the sender", "[receiver]") {
  DataListener listener("127.0.0.1");
  std::atomic<bool> stop{false};
  auto psk = generatePsk();
  auto data = noise(1 << 20, 12);
  TlsAcceptOptions options;  // the default limit, and the default bound: nothing times out here
  REQUIRE(options.maxPending == kMaxPendingHandshakes);
  auto receiver = std::async(std::launch::async, [&] {
    TlsStream tls = listener.acceptTls("m-flood", psk, 30s, stop, options);
    return receive(tls);
  });
  std::vector<Fd> flood;
  for (size_t i = 0; i < kMaxPendingHandshakes + 1; ++i) flood.push_back(connectTcp("127.0.0.1", listener.port(), 5s));
  // Let the receiver take all of them (a 17th past the limit evicts the first).
  REQUIRE(closedWithin(flood[0], 2s));
  auto start = Clock::now();
  std::string ack = send(listener.port(), "m-flood", psk, data);
  Received got = receiver.get();
  CHECK(secondsSince(start) < 2.0);
  CHECK(got.digest == sha256Of(data));
  CHECK(ack == got.digest);
  // The sender took the place of the second oldest; the newest stayed
  // pending until the receiver returned, and went with it. At no time did
  // the receiver hold more than the limit.
  CHECK(closedWithin(flood[1], 1s));
  size_t closed = 0;
  for (auto& s : flood) closed += closedWithin(s, 1s);
  CHECK(closed == flood.size());
}

namespace {

// A TCP connection to the listener from a loopback address of our choice
// (every 127/8 address is this host's): another "host" on the fabric.
Fd connectFrom(const char* source, uint16_t port) {
  Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  REQUIRE(fd.get() >= 0);
  sockaddr_in from{}, to{};
  from.sin_family = to.sin_family = AF_INET;
  ::inet_pton(AF_INET, source, &from.sin_addr);
  ::inet_pton(AF_INET, "127.0.0.1", &to.sin_addr);
  to.sin_port = htons(port);
  REQUIRE(::bind(fd.get(), reinterpret_cast<sockaddr*>(&from), sizeof from) == 0);
  REQUIRE(::connect(fd.get(), reinterpret_cast<sockaddr*>(&to), sizeof to) == 0);
  return fd;
}

}  // namespace

TEST_CASE("acceptTls: a flood from one address evicts only its own connections, never another host's", "[receiver]") {
  DataListener listener("127.0.0.1");
  std::atomic<bool> stop{false};
  auto psk = generatePsk();
  auto data = noise(1 << 20, 15);
  auto receiver = std::async(std::launch::async, [&] {
    TlsStream tls = listener.acceptTls("m-peer", psk, 30s, stop, TlsAcceptOptions{});
    return receive(tls);
  });
  // A slow sender's connection (its handshake not begun) from one host,
  // then a flood far past every limit from another.
  Fd slow = connectFrom("127.0.0.3", listener.port());
  std::vector<Fd> flood;
  for (size_t i = 0; i < 4 * kMaxPendingHandshakes; ++i) flood.push_back(connectFrom("127.0.0.2", listener.port()));
  REQUIRE(closedWithin(flood[0], 2s));  // the flooder's own oldest went
  CHECK_FALSE(closedWithin(slow, 500ms));  // the other host's is still pending
  std::string ack = send(listener.port(), "m-peer", psk, data);
  CHECK(receiver.get().digest == sha256Of(data));
  CHECK(ack == sha256Of(data));
}

TEST_CASE("acceptTls: the pending limit holds while the flood lasts", "[receiver]") {
  DataListener listener("127.0.0.1");
  std::atomic<bool> stop{false};
  TlsAcceptOptions options;
  options.maxPending = 4;
  auto receiver = std::async(std::launch::async, [&] {
    try {
      listener.acceptTls("m-limit", keyOf(5), 3s, stop, options);
    } catch (const Error&) {
    }
  });
  std::vector<Fd> flood;
  for (int i = 0; i < 10; ++i) flood.push_back(connectTcp("127.0.0.1", listener.port(), 5s));
  REQUIRE(closedWithin(flood[5], 2s));  // the 10th evicted the 6th
  size_t open = 0;
  for (auto& s : flood) open += !closedWithin(s, 100ms);
  CHECK(open == options.maxPending);
  stop = true;
  receiver.get();
}

TEST_CASE("acceptTls: the post-copy page channel, a second connection of the sender, is accepted past a stranger",
          "[receiver]") {
  DataListener listener("127.0.0.1");
  std::atomic<bool> stop{false};
  auto psk = generatePsk();
  auto bundle = noise(2 << 20, 13);
  auto pages = noise(3 << 20, 14);
  auto receiver = std::async(std::launch::async, [&] {
    TlsStream first = listener.acceptTls("m-pc", psk, 30s, stop, testOptions());
    Received a = receive(first);
    TlsStream second = listener.acceptTls("m-pc", psk, 30s, stop, testOptions());
    Received b = receive(second);
    return std::pair{a, b};
  });
  std::string ack1 = send(listener.port(), "m-pc", psk, bundle);
  // A stranger gets in between the two connections of the sender.
  Fd stranger = connectTcp("127.0.0.1", listener.port(), 5s);
  std::string ack2 = send(listener.port(), "m-pc", psk, pages);
  auto [a, b] = receiver.get();
  CHECK(a.digest == sha256Of(bundle));
  CHECK(b.digest == sha256Of(pages));
  CHECK(ack1 == a.digest);
  CHECK(ack2 == b.digest);
  CHECK(closedWithin(stranger, 1s));
}

TEST_CASE("acceptTls: gives up on stop and at its deadline, counting what it dropped", "[receiver]") {
  DataListener listener("127.0.0.1");
  std::atomic<bool> stop{false};
  Fd stranger = connectTcp("127.0.0.1", listener.port(), 5s);
  TlsAcceptOptions options;
  options.handshakeTimeout = 200ms;
  try {
    listener.acceptTls("m-none", keyOf(1), 800ms, stop, options);
    FAIL("accepted without a sender");
  } catch (const Error& e) {
    INFO(e.what());
    CHECK(e.kind() == ErrorKind::Disconnected);
    CHECK(std::string(e.what()).find("no sender authenticated on 127.0.0.1:" + std::to_string(listener.port()) +
                                     " within 800ms (1 connection(s) dropped)") != std::string::npos);
  }
  CHECK(closedNow(stranger));

  auto stopper = std::async(std::launch::async, [&] {
    std::this_thread::sleep_for(200ms);
    stop = true;
  });
  auto start = Clock::now();
  try {
    listener.acceptTls("m-none", keyOf(1), 60s, stop);
    FAIL("accepted without a sender");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::Failed);
    CHECK(std::string(e.what()).find("stopped") != std::string::npos);
  }
  CHECK(secondsSince(start) < 1.5);
  stopper.get();
}

TEST_CASE("acceptTls: a stream blocked in a read is stopped by its stop flag, not by touching its socket",
          "[receiver]") {
  DataListener listener("127.0.0.1");
  std::atomic<bool> stop{false};
  auto psk = generatePsk();
  std::promise<void> connected;
  auto reader = std::async(std::launch::async, [&] {
    TlsStream tls = listener.acceptTls("m-stop", psk, 10s, stop, testOptions());
    connected.set_value();
    char buffer[16];
    tls.read(buffer, sizeof buffer);  // the sender says nothing more
  });
  TlsStream sender = TlsStream::connect(connectTcp("127.0.0.1", listener.port(), 5s), "m-stop", psk, kTestIoTimeout);
  REQUIRE(connected.get_future().wait_for(5s) == std::future_status::ready);
  std::this_thread::sleep_for(300ms);
  auto start = Clock::now();
  stop = true;
  try {
    reader.get();
    FAIL("the read returned");
  } catch (const Error& e) {
    INFO(e.what());
    CHECK(e.kind() == ErrorKind::Failed);
    CHECK(std::string(e.what()).find("tls: read with 127.0.0.1:") != std::string::npos);
    CHECK(std::string(e.what()).find("stopped") != std::string::npos);
  }
  CHECK(secondsSince(start) < 1.0);
}

TEST_CASE("DataListener on IPv6 loopback carries plain TCP both ways and names each peer", "[receiver]") {
  if (!haveIpv6Loopback()) SKIP_TEST("no IPv6 loopback (::1) on this host");
  DataListener listener("::1");
  CHECK(listener.address() == "::1");
  REQUIRE(listener.port() != 0);
  DataListener other("::1");
  CHECK(other.port() != listener.port());  // one ephemeral port per migration

  Fd client = connectTcp("::1", listener.port(), 5s);
  Fd accepted = listener.acceptOne(5s);
  CHECK(socketPeerName(client.get()) == "[::1]:" + std::to_string(listener.port()));
  std::string acceptedPeer = socketPeerName(accepted.get());
  CHECK(acceptedPeer.rfind("[::1]:", 0) == 0);
  CHECK(acceptedPeer != "[::1]:" + std::to_string(listener.port()));

  const std::string ping = "page request", pong = "page data";
  REQUIRE(::send(client.get(), ping.data(), ping.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(ping.size()));
  std::string got(ping.size(), '\0');
  REQUIRE(::recv(accepted.get(), got.data(), got.size(), MSG_WAITALL) == static_cast<ssize_t>(got.size()));
  CHECK(got == ping);
  REQUIRE(::send(accepted.get(), pong.data(), pong.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(pong.size()));
  got.assign(pong.size(), '\0');
  REQUIRE(::recv(client.get(), got.data(), got.size(), MSG_WAITALL) == static_cast<ssize_t>(got.size()));
  CHECK(got == pong);

  // IPv4 peers are named without brackets; a socket with no peer is "unknown peer".
  DataListener v4("127.0.0.1");
  Fd client4 = connectTcp("127.0.0.1", v4.port(), 5s);
  CHECK(socketPeerName(client4.get()) == "127.0.0.1:" + std::to_string(v4.port()));
  Fd lonely(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  CHECK(socketPeerName(lonely.get()) == "unknown peer");
  CHECK_THROWS_WITH(DataListener("198.18.0.1.7"), Catch::Contains("not a numeric IP address"));
}
