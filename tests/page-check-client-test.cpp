// The pagecheck content function, the model's verdicts, and the client
// against the real payload binary run as a local process on 127.0.0.1 (no
// container, no lab): it must pass on a healthy payload and report, in
// words a fault test can show, a write made behind its back, a payload
// that lost its writes, a reset connection and a stall past its timeout.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <optional>
#include <thread>

#include "common/fd.h"
#include "common/subprocess.h"
#include "common/syscall.h"
#include "tests/payloads/pagecheck-content.h"
#include "tests/support/page-check-client.h"
#include "tests/support/wait.h"

using namespace migrate;
using namespace migrate::test;
using namespace std::chrono_literals;

namespace {

constexpr uint64_t kMib = 8, kSeed = 1234;

// `pagecheck 0 MIB SEED` on this host: any free port, read from its ready
// line. Killed (by its PID, SIGKILL) and reaped when it goes.
class LocalPayload {
 public:
  explicit LocalPayload(uint64_t mib = kMib, uint64_t seed = kSeed) {
    int fds[2];
    SYSCALL(::pipe2(fds, O_CLOEXEC), "pipe2");
    Fd readEnd(fds[0]), writeEnd(fds[1]);
    auto o = SubprocessOptions::of({PAGECHECK_BINARY, "0", std::to_string(mib), std::to_string(seed)});
    o.stdoutFd = writeEnd.get();
    process_.emplace(o);
    writeEnd.reset();
    std::string out;
    while (out.find('\n') == std::string::npos) {
      pollfd p{readEnd.get(), POLLIN, 0};
      if (SYSCALL(::poll(&p, 1, 10000), "poll") == 0) FAIL("pagecheck printed no ready line within 10 s");
      char buf[256];
      ssize_t n = SYSCALL(::read(readEnd.get(), buf, sizeof buf), "read");
      if (n == 0) FAIL("pagecheck exited before it was ready: " << out);
      out.append(buf, static_cast<size_t>(n));
    }
    INFO(out);
    auto at = out.find(" port ");
    REQUIRE(out.rfind("ready ", 0) == 0);
    REQUIRE(at != std::string::npos);
    port_ = std::stoi(out.substr(at + 6));
    output_ = std::move(readEnd);  // kept open: its later lines must not hit a closed pipe
  }
  ~LocalPayload() {
    if (process_) process_->kill(SIGKILL);
  }
  int port() const { return port_; }
  pid_t pid() const { return process_->pid(); }
  void kill() {
    process_->kill(SIGKILL);
    process_->wait();
    process_.reset();
  }

 private:
  std::optional<Subprocess> process_;
  Fd output_;
  int port_ = 0;
};

PageCheckClient::Options options(std::chrono::milliseconds replyTimeout = 60s) {
  return {.mib = kMib, .seed = kSeed, .replyTimeout = replyTimeout};
}

}  // namespace

TEST_CASE("pagecheck content: deterministic per (seed, page, version), a header, and a zero page matches none") {
  uint64_t a[PAGECHECK_WORDS], b[PAGECHECK_WORDS], zero[PAGECHECK_WORDS] = {};
  pagecheckFill(a, 7, 100, 3);
  pagecheckFill(b, 7, 100, 3);
  CHECK(std::equal(a, a + PAGECHECK_WORDS, b));
  CHECK(a[PAGECHECK_MAGIC_WORD] == PAGECHECK_MAGIC);
  CHECK(a[PAGECHECK_INDEX_WORD] == 100);
  CHECK(a[PAGECHECK_VERSION_WORD] == 3);
  uint64_t sum = pagecheckChecksum(a);
  CHECK(sum == pagecheckExpectedChecksum(7, 100, 3));
  CHECK(sum != pagecheckExpectedChecksum(7, 100, 2));
  CHECK(sum != pagecheckExpectedChecksum(7, 101, 3));
  CHECK(sum != pagecheckExpectedChecksum(8, 100, 3));
  // Not just the header: the stream after it differs too.
  pagecheckFill(b, 8, 100, 3);
  CHECK(!std::equal(a + PAGECHECK_HEADER_WORDS, a + PAGECHECK_WORDS, b + PAGECHECK_HEADER_WORDS));
  // One flipped bit anywhere changes the checksum.
  a[PAGECHECK_WORDS - 1] ^= 1u << 9;
  CHECK(pagecheckChecksum(a) != sum);
  for (uint64_t v = 0; v < 4; ++v) CHECK(pagecheckChecksum(zero) != pagecheckExpectedChecksum(7, 0, v));
}

TEST_CASE("pagecheck model: right replies pass, a lost write and a wrong page are described") {
  PageCheckModel model(1, 5);  // 256 pages
  REQUIRE(model.pages() == 256);
  CHECK_FALSE(model.acknowledge(10, model.nextVersion(10), 1));
  CHECK_FALSE(model.acknowledge(10, model.nextVersion(10), 2));
  CHECK_FALSE(model.acknowledge(20, model.nextVersion(20), 3));
  CHECK(model.versionOf(10) == 2);
  CHECK(model.written() == std::vector<uint64_t>{10, 20});
  CHECK_FALSE(model.checkRead(10, 2, pagecheckExpectedChecksum(5, 10, 2)));
  CHECK_FALSE(model.checkRead(11, 0, pagecheckExpectedChecksum(5, 11, 0)));
  CHECK_FALSE(model.checkCount(3));

  auto stale = model.checkRead(10, 1, pagecheckExpectedChecksum(5, 10, 1));
  REQUIRE(stale);
  CHECK(*stale == "read page 10: version 1 checksum " + checksumText(pagecheckExpectedChecksum(5, 10, 1)) +
                      ", expected version 2 checksum " + checksumText(pagecheckExpectedChecksum(5, 10, 2)));
  uint64_t zero[PAGECHECK_WORDS] = {};
  auto zeroed = model.checkRead(11, 0, pagecheckChecksum(zero));
  REQUIRE(zeroed);
  CHECK(zeroed->find("read page 11: version 0 checksum " + checksumText(pagecheckChecksum(zero))) == 0);

  // The payload remembers 1 of the 3 acknowledged writes and counts this one.
  auto lost = model.acknowledge(30, 1, 2);
  REQUIRE(lost);
  CHECK(*lost == "counter went back from 3 to 1 (W 30 1 answered 2): 2 acknowledged writes lost");
  CHECK(model.acknowledged() == 3);  // not recorded
  auto extra = model.checkCount(5);
  REQUIRE(extra);
  CHECK(*extra == "counter jumped from 3 to 5 (C answered 5): 2 writes counted that were never acknowledged");
}

TEST_CASE("pagecheck client against the local payload: steps verify, the count is continuous, a scan is clean") {
  LocalPayload payload;
  PageCheckClient client(options());
  client.connect("127.0.0.1", payload.port());
  auto s = client.runFor(500ms);
  INFO(s.describe());
  CHECK(s.ok());
  CHECK(s.steps > 100);
  CHECK(s.acknowledged == s.steps);
  CHECK(client.verifyCount());
  CHECK(client.verifyWritten());
  CHECK(client.scan() == std::optional<uint64_t>(0));
  CHECK(client.summary().reads >= s.steps);

  // In the background, stopped between steps: every write acknowledged.
  client.start();
  CHECK(waitUntil([&] { return client.summary().steps > s.steps + 100; }, 10s));
  auto after = client.stop();
  INFO(after.describe());
  CHECK(after.ok());
  CHECK(client.verifyCount());
  CHECK(client.stop().steps == after.steps);  // idempotent
}

TEST_CASE("pagecheck payload: bad requests get err and the payload goes on") {
  LocalPayload payload;
  PageCheckClient client(options());
  client.connect("127.0.0.1", payload.port());
  for (auto bad : {"W", "W 1", "W x 1", "W 1 -1", "W 2048 1", "R", "R 99999999999999999999999", "R 1 2", "X", "",
                   "W 1 2 3 4 5", "C C"}) {
    INFO("request `" << bad << "`");
    auto reply = client.rawRequest(bad);
    REQUIRE(reply);
    CHECK(reply->rfind("err ", 0) == 0);
  }
  CHECK(client.rawRequest(std::string(1000, 'W'))->rfind("err line longer", 0) == 0);
  CHECK(client.verifyCount());  // no bad request counted as a write
  CHECK(client.runFor(100ms).ok());
  CHECK(client.scan() == std::optional<uint64_t>(0));
}

TEST_CASE("pagecheck client: a write behind the model's back is reported as the page's wrong version") {
  LocalPayload payload;
  PageCheckClient client(options());
  client.connect("127.0.0.1", payload.port());
  REQUIRE(client.write(7));
  REQUIRE(client.rawRequest("W 7 9") == std::optional<std::string>("ok 2"));
  CHECK_FALSE(client.read(7));
  auto s = client.summary();
  REQUIRE(s.violation);
  CHECK(*s.violation == "read page 7: version 9 checksum " + checksumText(pagecheckExpectedChecksum(kSeed, 7, 9)) +
                            ", expected version 1 checksum " + checksumText(pagecheckExpectedChecksum(kSeed, 7, 1)));
  CHECK_FALSE(s.connectionError);
  // The first failure is kept; nothing runs after it.
  CHECK_FALSE(client.step());
  CHECK(client.summary().violation == s.violation);
}

TEST_CASE("pagecheck client: a killed payload is a connection error, and one that lost the writes shows the loss") {
  auto first = std::make_optional<LocalPayload>();
  PageCheckClient client(options());
  client.connect("127.0.0.1", first->port());
  REQUIRE(client.runFor(200ms).ok());
  auto acknowledged = client.summary().acknowledged;
  REQUIRE(acknowledged > 10);
  first->kill();
  CHECK_FALSE(client.step());
  auto s = client.summary();
  INFO(s.describe());
  REQUIRE(s.connectionError);
  CHECK_FALSE(s.violation);

  // The same seed, started afresh: its pages are version 0 and its counter 0.
  LocalPayload second;
  client.connect("127.0.0.1", second.port());
  CHECK_FALSE(client.step());
  s = client.summary();
  INFO(s.describe());
  CHECK_FALSE(s.connectionError);
  REQUIRE(s.violation);
  // Whichever page it wrote: the fresh payload's 1 is its first write.
  auto went = "counter went back from " + std::to_string(acknowledged) + " to 0 (W ";
  auto lost = " answered 1): " + std::to_string(acknowledged) + " acknowledged writes lost";
  CHECK(s.violation->rfind(went, 0) == 0);
  CHECK(s.violation->find(lost) == s.violation->size() - lost.size());
}

TEST_CASE("pagecheck client: a stall shorter than the reply timeout is tolerated, a longer one reported") {
  LocalPayload payload;
  {
    PageCheckClient patient(options(60s));
    patient.connect("127.0.0.1", payload.port());
    patient.start();
    REQUIRE(waitUntil([&] { return patient.summary().steps > 20; }, 10s));
    ::kill(payload.pid(), SIGSTOP);  // as a migration freezes it
    std::this_thread::sleep_for(1500ms);
    ::kill(payload.pid(), SIGCONT);
    auto at = patient.summary().steps;
    CHECK(waitUntil([&] { return patient.summary().steps > at + 20; }, 10s));
    auto s = patient.stop();
    INFO(s.describe());
    CHECK(s.ok());
    CHECK(s.longestReplyMs >= 1000);
  }

  // A fresh payload: this one's counter holds the writes of `patient`,
  // which a new client's model does not know.
  LocalPayload fresh;
  PageCheckClient hasty(options(300ms));
  hasty.connect("127.0.0.1", fresh.port());
  auto warm = hasty.runFor(50ms);
  INFO(warm.describe());
  REQUIRE(warm.ok());
  ::kill(fresh.pid(), SIGSTOP);
  CHECK_FALSE(hasty.step());
  ::kill(fresh.pid(), SIGCONT);
  auto h = hasty.summary();
  INFO(h.describe());
  REQUIRE(h.connectionError);
  CHECK(h.connectionError->find("within 300 ms") != std::string::npos);
  CHECK_FALSE(h.violation);
}
