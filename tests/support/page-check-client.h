// Drives a pagecheck payload (tests/payloads/pagecheck.c) over one TCP
// connection and verifies every reply against a PageCheckModel: the writes
// it had acknowledged must all be there (its counter never goes back), and
// every page read must hold exactly the version last acknowledged, byte for
// byte. For tests that migrate the payload's container, with or without
// faults: step in the background during the move, then look at summary().
//
// A stall is not a failure (a migration freezes the payload for seconds):
// a reply may take up to Options::replyTimeout. A connection that is reset,
// closed or silent for longer is one, reported apart from a wrong reply.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>

#include "common/fd.h"
#include "tests/support/page-check-model.h"

namespace migrate::test {

// What the client saw so far.
struct PageCheckSummary {
  uint64_t steps = 0;          // W+R pairs done, both replies verified
  uint64_t acknowledged = 0;   // writes the payload acknowledged
  uint64_t reads = 0;          // reads verified (steps' and verifyWritten's)
  double longestReplyMs = 0;   // the longest wait for one reply: a freeze shows here
  // The first reply that disagreed with the model: a lost write, a wrong byte.
  std::optional<std::string> violation;
  // Why the connection failed: reset, closed, or no reply within the timeout.
  std::optional<std::string> connectionError;

  bool ok() const { return !violation && !connectionError; }
  std::string describe() const;  // one line, for a test's INFO
};

class PageCheckClient {
 public:
  struct Options {
    uint64_t mib;   // as the payload was started: pagecheck PORT MIB SEED
    uint64_t seed;
    std::chrono::milliseconds replyTimeout = std::chrono::seconds(60);
    uint64_t randomSeed = 1;  // which pages the steps pick
  };
  explicit PageCheckClient(const Options& options);
  ~PageCheckClient();  // abort(), then joins the stepping thread
  PageCheckClient(const PageCheckClient&) = delete;
  PageCheckClient& operator=(const PageCheckClient&) = delete;

  // Connects to ip:port, from network namespace `netns` if given (the lab's
  // /run/netns/client reaches containers' IPs), retrying until `timeout` while
  // nothing listens yet. Connecting again (after a fault) keeps the model, so
  // a payload that lost writes shows it; it clears a connection error.
  void connect(const std::string& ip, int port, const std::optional<std::filesystem::path>& netns = std::nullopt,
               std::chrono::milliseconds timeout = std::chrono::seconds(10));

  // Every call below returns false once a failure is recorded (the first is
  // kept); none may run while start()ed.

  // One W of a random page at its next version, then one R of a random page
  // (half the time one written before), both verified.
  bool step();
  // Steps on this thread for `duration` or until the first failure.
  PageCheckSummary runFor(std::chrono::milliseconds duration);
  bool write(uint64_t page);  // W page nextVersion
  bool read(uint64_t page);   // R page
  // R of every page written so far.
  bool verifyWritten();
  // C: the payload's counter equals the writes acknowledged.
  bool verifyCount();
  // S: how many pages do not match their own header (0 for a healthy
  // payload); nullopt if the connection failed.
  std::optional<uint64_t> scan();
  // One request line, its reply line unchecked (for tests of the protocol
  // itself, or to change the payload behind the model's back).
  std::optional<std::string> rawRequest(const std::string& line);

  // Steps on a thread of this client until stop() or the first failure.
  void start();
  // Lets the step in flight finish (bounded by the reply timeout), joins,
  // and returns the summary. Idempotent; from the thread that called start().
  PageCheckSummary stop();
  // Makes every request give up at once, even mid-reply (the write in flight
  // may then be applied but unacknowledged), for good. Safe from any thread.
  void abort();
  PageCheckSummary summary() const;

 private:
  // Sends `line` and waits for one reply line; nullopt after recording a
  // connection error.
  std::optional<std::string> request(const std::string& line);
  bool failed() const;
  bool recordViolation(const std::string& what);
  bool recordConnectionError(const std::string& what);
  bool expectReply(const std::string& request, const std::string& reply, const std::string& form);
  void runSteps();

  Options options_;
  Fd socket_;                // used only by the thread that steps
  std::string received_;     // bytes after the last reply line
  Fd abort_;                 // eventfd: every wait for a reply polls it
  std::mt19937_64 random_;

  mutable std::mutex mutex_;  // guards model_ and summary_
  PageCheckModel model_;
  PageCheckSummary summary_;

  std::atomic<bool> stopRequested_{false};
  std::mutex joinMutex_;      // one join of thread_
  std::thread thread_;
};

}  // namespace migrate::test
