// The daemon's receivers without a coordinator: real listeners on loopback,
// real TLS senders, and stop, end, restore, reap and shutdown raced from
// several threads. An Agent on a scratch state dir imports (and refuses)
// what arrives; no container runs.
#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <future>
#include <mutex>
#include <thread>
#include <vector>

#include "agent/receiver-set.h"
#include "common/error.h"
#include "common/files.h"
#include "net/data-listener.h"
#include "net/tls-stream.h"

using namespace migrate;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

AgentOptions scratchAgent(const fs::path& stateDir) {
  AgentOptions options;
  options.stateDir = stateDir;
  return options;
}

struct Reports {
  std::mutex mutex;
  std::vector<ProgressReport> seen;
  std::vector<std::string> failures;
  ReportProgress sink() {
    return [this](const ProgressReport& r) {
      std::lock_guard lock(mutex);
      seen.push_back(r);
      if (r.failure) failures.push_back(r.failure->what());
    };
  }
  size_t failureCount() {
    std::lock_guard lock(mutex);
    return failures.size();
  }
};

struct Fixture {
  TempDir state{"/tmp", "receiver-test"};
  Agent agent{scratchAgent(state.path())};
  ReceiverSet receivers{"local"};
  Reports reports;

  ReceiverSpec spec(const std::string& migrationId, const std::string& name) {
    ReceiverSpec s;
    s.migrationId = migrationId;
    s.requestId = 7;
    s.containerName = name;
    s.psk = generatePsk();
    s.acceptTimeout = 30s;
    return s;
  }
};

ErrorKind kindOfCall(const std::function<void()>& call) {
  try {
    call();
  } catch (const std::exception& e) {
    return kindOf(e);
  }
  FAIL("no error");
  return ErrorKind::Failed;
}

template <typename Condition>
bool waitFor(Condition condition, std::chrono::milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  while (!condition()) {
    if (Clock::now() > deadline) return false;
    std::this_thread::sleep_for(10ms);
  }
  return true;
}

}  // namespace

TEST_CASE("receivers refuse a second one for the same migration, container name or user namespace ids") {
  Fixture f;
  auto first = f.spec("m-1", "web");
  first.idMapping = IdMapping{1u << 30, kIdMappingSize};
  auto r = f.receivers.create(f.agent, first, f.reports.sink());
  CHECK(kindOfCall([&] { f.receivers.create(f.agent, f.spec("m-1", "other"), f.reports.sink()); }) ==
        ErrorKind::Conflict);
  CHECK(kindOfCall([&] { f.receivers.create(f.agent, f.spec("m-2", "web"), f.reports.sink()); }) ==
        ErrorKind::Conflict);
  auto overlapping = f.spec("m-3", "db");
  overlapping.idMapping = IdMapping{(1u << 30) + 100, kIdMappingSize};
  CHECK(kindOfCall([&] { f.receivers.create(f.agent, overlapping, f.reports.sink()); }) == ErrorKind::Conflict);
  CHECK(f.receivers.liveCount() == 1);
  // Ended, its name and ids are free again.
  r->end("aborted");
  CHECK(f.receivers.create(f.agent, overlapping, f.reports.sink()));
}

TEST_CASE("a sender with the key but a garbage bundle ends its receiver, which says why and is then destroyed") {
  Fixture f;
  auto spec = f.spec("m-garbage", "web");
  auto psk = spec.psk;
  std::weak_ptr<Receiver> weak;
  uint16_t port = 0;
  {
    auto r = f.receivers.create(f.agent, spec, f.reports.sink());
    port = r->start("127.0.0.1");
    weak = r;
  }
  {
    auto tls = TlsStream::connect(connectTcp("127.0.0.1", port, 5s), "m-garbage", psk);
    std::string garbage(64 << 10, 'x');
    try {
      tls.write(garbage.data(), garbage.size());
      tls.shutdownWrite();
    } catch (const std::exception&) {
      // The receiver may have hung up already.
    }
  }
  REQUIRE(waitFor([&] { return f.reports.failureCount() == 1; }, 20s));
  CHECK(f.reports.seen.back().requestId == 7);
  CHECK(f.reports.seen.back().phase == Phase::Receive);
  // A restore that comes after hears why.
  CHECK(kindOfCall([&] { f.receivers.find("m-garbage"); }) == ErrorKind::Failed);
  CHECK(f.receivers.liveCount() == 0);
  REQUIRE(waitFor([&] {
    f.receivers.reap();
    return weak.expired();
  }, 20s));
  // Nothing of the import is left in the state dir.
  CHECK(f.agent.list().empty());
}

TEST_CASE("stop, end, find and reap raced on many receivers neither hang nor crash, and each ends once") {
  Fixture f;
  constexpr int kReceivers = 16;
  std::vector<std::shared_ptr<Receiver>> started;
  for (int i = 0; i < kReceivers; ++i) {
    auto r = f.receivers.create(f.agent, f.spec("m-" + std::to_string(i), "c-" + std::to_string(i)),
                                f.reports.sink());
    r->start("127.0.0.1");
    started.push_back(std::move(r));
  }
  std::atomic<bool> go{false};
  std::atomic<int> stopped{0};  // counted here: Catch2's assertions are not for other threads
  std::vector<std::thread> threads;
  for (int i = 0; i < kReceivers; ++i) {
    auto r = started[static_cast<size_t>(i)];
    threads.emplace_back([&go, &stopped, r] {
      while (!go) std::this_thread::yield();
      if (r->stop(10s)) ++stopped;
    });
    threads.emplace_back([&go, r] {
      while (!go) std::this_thread::yield();
      r->end("aborted by the test");
    });
    threads.emplace_back([&go, &f, i] {
      while (!go) std::this_thread::yield();
      try {
        f.receivers.find("m-" + std::to_string(i));
      } catch (const std::exception&) {
        // Ended already: that is one of the outcomes.
      }
      f.receivers.reap();
    });
  }
  auto start = Clock::now();
  go = true;
  for (auto& t : threads) t.join();
  CHECK(Clock::now() - start < 10s);
  CHECK(stopped == kReceivers);
  CHECK(f.receivers.liveCount() == 0);
  for (int i = 0; i < kReceivers; ++i) {
    CHECK(kindOfCall([&] { f.receivers.find("m-" + std::to_string(i)); }) == ErrorKind::Failed);
  }
  // Ours are the last references besides the set's: reaped once dropped.
  std::vector<std::weak_ptr<Receiver>> weak(started.begin(), started.end());
  started.clear();
  f.receivers.reap();
  for (auto& w : weak) CHECK(w.expired());
}

TEST_CASE("a restore waiting for its bundle gives up as soon as its receiver is stopped") {
  Fixture f;
  auto r = f.receivers.create(f.agent, f.spec("m-wait", "web"), f.reports.sink());
  r->start("127.0.0.1");
  auto restore = std::async(std::launch::async, [&] {
    return kindOfCall([&] { r->restore(RestoreAsk{}, 60s); });
  });
  CHECK(restore.wait_for(300ms) == std::future_status::timeout);  // still waiting for a sender
  auto stopped = Clock::now();
  CHECK(r->stop(10s));
  REQUIRE(restore.wait_for(10s) == std::future_status::ready);
  CHECK(restore.get() == ErrorKind::Failed);
  CHECK(Clock::now() - stopped < 5s);
}

TEST_CASE("shutting down the receivers while they wait for senders returns at once and leaves nothing") {
  auto state = std::make_unique<TempDir>("/tmp", "receiver-test");
  Agent agent{scratchAgent(state->path())};
  Reports reports;
  auto receivers = std::make_unique<ReceiverSet>("local");
  std::vector<uint16_t> ports;
  for (int i = 0; i < 4; ++i) {
    ReceiverSpec s;
    s.migrationId = "m-" + std::to_string(i);
    s.containerName = "c-" + std::to_string(i);
    s.psk = generatePsk();
    s.acceptTimeout = 60s;
    ports.push_back(receivers->create(agent, s, reports.sink())->start("127.0.0.1"));
  }
  receivers->stopAll();
  CHECK(kindOfCall([&] { receivers->create(agent, ReceiverSpec{}, reports.sink()); }) == ErrorKind::Failed);
  auto start = Clock::now();
  receivers.reset();
  CHECK(Clock::now() - start < 5s);
  // Their listeners are closed: nobody accepts there any more.
  for (auto port : ports) {
    CHECK(kindOfCall([&] { connectTcp("127.0.0.1", port, 1s); }) == ErrorKind::Disconnected);
  }
  // Stopped by shutdown, none of them told the coordinator it failed.
  CHECK(reports.failureCount() == 0);
}
