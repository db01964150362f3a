// Real OpenSSL over loopback TCP; ephemeral ports.
#include "net/tls-stream.h"

#include <sys/socket.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <future>
#include <iostream>
#include <thread>

#include "common/error.h"
#include "common/hash-stream.h"
#include "net/data-listener.h"

using namespace migrate;
using namespace std::chrono_literals;

namespace {

constexpr size_t kChunk = 256 << 10;
constexpr auto kTestIoTimeout = 20s;

// Incompressible, reproducible bytes.
class NoiseSource {
 public:
  void fill(std::vector<uint8_t>& buffer) {
    for (size_t i = 0; i + 8 <= buffer.size(); i += 8) {
      state_ ^= state_ << 13;
      state_ ^= state_ >> 7;
      state_ ^= state_ << 17;
      std::memcpy(buffer.data() + i, &state_, 8);
    }
  }

 private:
  uint64_t state_ = 0x9e3779b97f4a7c15ull;
};

std::vector<uint8_t> keyOf(uint8_t seed) { return std::vector<uint8_t>(32, seed); }

struct Received {
  std::string digest;
  uint64_t bytes = 0;
};

// Target side: accept, read to close_notify hashing, answer with the digest.
Received receiveAndAcknowledge(DataListener& listener, const std::string& identity, std::vector<uint8_t> psk) {
  TlsStream tls = TlsStream::accept(listener.acceptOne(5s), identity, psk, kTestIoTimeout);
  TlsInputStream raw(tls);
  Sha256InputStream in(raw);
  std::vector<uint8_t> buffer(kChunk);
  Received result;
  while (size_t n = in.read(buffer.data(), buffer.size())) result.bytes += n;
  result.digest = in.hexDigest();
  // Half-close: our direction is still open after the peer's close_notify.
  TlsOutputStream out(tls);
  out.write(result.digest.data(), result.digest.size());
  out.finish();
  return result;
}

struct Sent {
  std::string digest;
  std::string acknowledged;
  double seconds = 0;
};

Sent sendAndAwaitAcknowledgement(uint16_t port, const std::string& identity, const std::vector<uint8_t>& psk,
                                 uint64_t total) {
  auto start = std::chrono::steady_clock::now();
  TlsStream tls = TlsStream::connect(connectTcp("127.0.0.1", port, 5s), identity, psk, kTestIoTimeout);
  TlsOutputStream raw(tls);
  Sha256OutputStream out(raw);
  NoiseSource noise;
  std::vector<uint8_t> buffer(kChunk);
  for (uint64_t sent = 0; sent < total; sent += buffer.size()) {
    noise.fill(buffer);
    out.write(buffer.data(), std::min<uint64_t>(buffer.size(), total - sent));
  }
  out.finish();
  Sent result;
  result.digest = out.hexDigest();
  char ack[128];
  while (size_t n = tls.read(ack, sizeof(ack))) result.acknowledged.append(ack, n);
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

}  // namespace

TEST_CASE("tls: 50 MiB round trip with matching SHA-256 on both sides") {
  DataListener listener("127.0.0.1");
  REQUIRE(listener.port() != 0);
  auto psk = generatePsk();
  REQUIRE(psk.size() == 32);
  auto receiver = std::async(std::launch::async, [&] { return receiveAndAcknowledge(listener, "m-50", psk); });
  Sent sent = sendAndAwaitAcknowledgement(listener.port(), "m-50", psk, 50ull << 20);
  Received received = receiver.get();
  CHECK(received.bytes == 50ull << 20);
  CHECK(received.digest.size() == 64);
  CHECK(received.digest == sent.digest);
  CHECK(sent.acknowledged == sent.digest);
}

TEST_CASE("tls: a wrong pre-shared key is refused on both sides") {
  DataListener listener("127.0.0.1");
  auto server = std::async(std::launch::async, [&] {
    TlsStream::accept(listener.acceptOne(5s), "m-1", keyOf(1), kTestIoTimeout);
  });
  try {
    TlsStream::connect(connectTcp("127.0.0.1", listener.port(), 5s), "m-1", keyOf(2), kTestIoTimeout);
    FAIL("client handshake succeeded with the wrong key");
  } catch (const Error& e) {
    INFO(e.what());
    CHECK(e.kind() == ErrorKind::InvalidInput);
    CHECK(std::string(e.what()).find("tls: handshake with 127.0.0.1:") != std::string::npos);
  }
  try {
    server.get();
    FAIL("server handshake succeeded with the wrong key");
  } catch (const Error& e) {
    INFO(e.what());
    CHECK(e.kind() == ErrorKind::InvalidInput);
    CHECK(std::string(e.what()).find("tls: handshake with 127.0.0.1:") != std::string::npos);
    CHECK(std::string(e.what()).find("wrong pre-shared key") != std::string::npos);
  }
}

TEST_CASE("tls: a wrong PSK identity is refused on both sides, naming the identity") {
  DataListener listener("127.0.0.1");
  auto server = std::async(std::launch::async, [&] {
    TlsStream::accept(listener.acceptOne(5s), "m-expected", keyOf(1), kTestIoTimeout);
  });
  CHECK_THROWS_AS(TlsStream::connect(connectTcp("127.0.0.1", listener.port(), 5s), "m-other", keyOf(1), kTestIoTimeout),
                  Error);
  try {
    server.get();
    FAIL("server handshake succeeded with the wrong identity");
  } catch (const Error& e) {
    INFO(e.what());
    CHECK(e.kind() == ErrorKind::InvalidInput);
    CHECK(std::string(e.what()).find("offered PSK identity `m-other`, expected `m-expected`") != std::string::npos);
  }
}

TEST_CASE("tls: a sender that vanishes mid-stream gives the reader a truncated Disconnected error") {
  DataListener listener("127.0.0.1");
  auto psk = generatePsk();
  auto reader = std::async(std::launch::async, [&] {
    TlsStream tls = TlsStream::accept(listener.acceptOne(5s), "m-cut", psk, kTestIoTimeout);
    TlsInputStream in(tls);
    std::vector<uint8_t> buffer(kChunk);
    uint64_t total = 0;
    while (size_t n = in.read(buffer.data(), buffer.size())) total += n;
    return total;
  });
  {
    TlsStream tls = TlsStream::connect(connectTcp("127.0.0.1", listener.port(), 5s), "m-cut", psk, kTestIoTimeout);
    std::vector<uint8_t> data(1 << 20, 0x5a);
    tls.write(data.data(), data.size());
    // Destroyed without finish(): no close_notify, just the socket closing.
  }
  try {
    reader.get();
    FAIL("a cut stream read as complete");
  } catch (const Error& e) {
    INFO(e.what());
    CHECK(e.kind() == ErrorKind::Disconnected);
    CHECK(std::string(e.what()).find("tls: stream from 127.0.0.1:") != std::string::npos);
    CHECK(std::string(e.what()).find("ended before close_notify (truncated") != std::string::npos);
  }
}

TEST_CASE("tls: a connection reset mid-stream is truncated too") {
  DataListener listener("127.0.0.1");
  auto psk = generatePsk();
  auto reader = std::async(std::launch::async, [&] {
    TlsStream tls = TlsStream::accept(listener.acceptOne(5s), "m-rst", psk, kTestIoTimeout);
    std::vector<uint8_t> buffer(kChunk);
    while (tls.read(buffer.data(), buffer.size()) != 0) {
    }
  });
  TlsStream tls = TlsStream::connect(connectTcp("127.0.0.1", listener.port(), 5s), "m-rst", psk, kTestIoTimeout);
  std::vector<uint8_t> data(1 << 20, 0xa5);
  tls.write(data.data(), data.size());
  // SO_LINGER 0: close() sends RST instead of FIN.
  linger hard{1, 0};
  REQUIRE(::setsockopt(tls.fd(), SOL_SOCKET, SO_LINGER, &hard, sizeof(hard)) == 0);
  { TlsStream gone = std::move(tls); }
  try {
    reader.get();
    FAIL("a reset stream read as complete");
  } catch (const Error& e) {
    INFO(e.what());
    CHECK(e.kind() == ErrorKind::Disconnected);
    CHECK(std::string(e.what()).find("truncated") != std::string::npos);
  }
}

TEST_CASE("tls: the PSK must be 16..48 bytes") {
  DataListener listener("127.0.0.1");
  Fd sock = connectTcp("127.0.0.1", listener.port(), 5s);
  std::vector<uint8_t> tiny(8, 1);
  try {
    TlsStream::connect(std::move(sock), "m", tiny);
    FAIL("8-byte key accepted");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::InvalidInput);
    CHECK(std::string(e.what()).find("16..48 bytes") != std::string::npos);
  }
}

TEST_CASE("data: accept and connect time out or are refused as Disconnected") {
  DataListener listener("127.0.0.1");
  try {
    listener.acceptOne(200ms);
    FAIL("accepted without a sender");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::Disconnected);
    CHECK(std::string(e.what()).find("no sender connected to 127.0.0.1:" + std::to_string(listener.port()) +
                                     " within 200ms") != std::string::npos);
  }
  uint16_t closedPort;
  {
    DataListener gone("127.0.0.1");
    closedPort = gone.port();
  }
  try {
    connectTcp("127.0.0.1", closedPort, 2s);
    FAIL("connected to a closed port");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::Disconnected);
  }
  CHECK_THROWS_WITH(DataListener("not-an-address"), Catch::Contains("not a numeric IP address"));
}

// Not a test assertion: prints the loopback throughput of one stream.
// Run: net-tests "[benchmark]"
TEST_CASE("tls: 512 MiB loopback throughput", "[.][benchmark]") {
  DataListener listener("127.0.0.1");
  auto psk = generatePsk();
  auto receiver = std::async(std::launch::async, [&] { return receiveAndAcknowledge(listener, "m-bench", psk); });
  constexpr uint64_t total = 512ull << 20;
  Sent sent = sendAndAwaitAcknowledgement(listener.port(), "m-bench", psk, total);
  Received received = receiver.get();
  CHECK(received.digest == sent.digest);
  std::cout << "tls: 512 MiB over loopback in " << sent.seconds << " s = " << (total / 1e6) / sent.seconds
            << " MB/s (including noise generation and SHA-256 on both sides)\n";
}

TEST_CASE("DataListener: an accept that can be stopped gives up on stop, on timeout, and takes a sender", "[tls]") {
  DataListener listener("127.0.0.1");
  std::atomic<bool> stop{false};
  try {
    listener.acceptOne(300ms, stop);
    FAIL("accepted with nobody connecting");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::Disconnected);
    CHECK(std::string(e.what()).find("within") != std::string::npos);
  }

  auto stopper = std::async(std::launch::async, [&] {
    std::this_thread::sleep_for(100ms);
    stop = true;
  });
  try {
    listener.acceptOne(60s, stop);
    FAIL("accepted with nobody connecting");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::Failed);
    CHECK(std::string(e.what()).find("stopped") != std::string::npos);
  }
  stopper.get();

  stop = false;
  auto client = std::async(std::launch::async, [&] { return connectTcp("127.0.0.1", listener.port(), 5s); });
  Fd accepted = listener.acceptOne(5s, stop);
  CHECK(accepted);
  CHECK(client.get());
}
