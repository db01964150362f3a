#include "tests/support/page-check-client.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <sstream>
#include <vector>

#include "common/error.h"
#include "common/syscall.h"
#include "net/netns.h"

namespace migrate::test {

namespace {

using Clock = std::chrono::steady_clock;

std::vector<std::string> wordsOf(const std::string& line) {
  std::vector<std::string> words;
  std::istringstream in(line);
  for (std::string w; in >> w;) words.push_back(w);
  return words;
}

// A whole number in `base`, nothing around it.
std::optional<uint64_t> numberOf(const std::string& text, int base = 10) {
  if (text.empty() || text[0] == '-' || text[0] == '+' || text[0] == ' ') return std::nullopt;
  errno = 0;
  char* end = nullptr;
  unsigned long long v = std::strtoull(text.c_str(), &end, base);
  if (errno || *end) return std::nullopt;
  return v;
}

// One connection attempt to ip:port, or the errno that refused it. The
// connect is bounded (SO_SNDTIMEO) so that an unreachable address fails
// within the caller's deadline.
std::pair<Fd, int> tryConnect(const sockaddr_in& address) {
  Fd fd(SYSCALL(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), "socket"));
  timeval bound{2, 0};
  SYSCALL(::setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &bound, sizeof bound), "SO_SNDTIMEO");
  if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&address), sizeof address) != 0) return {Fd(), errno};
  int one = 1;
  SYSCALL(::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one), "TCP_NODELAY");
  return {std::move(fd), 0};
}

}  // namespace

std::string PageCheckSummary::describe() const {
  std::string text = std::to_string(steps) + " steps, " + std::to_string(acknowledged) + " writes acknowledged, " +
                     std::to_string(reads) + " reads verified, longest reply " +
                     std::to_string(static_cast<int64_t>(longestReplyMs)) + " ms";
  if (violation) text += "; violation: " + *violation;
  if (connectionError) text += "; connection: " + *connectionError;
  return text;
}

PageCheckClient::PageCheckClient(const Options& options)
    : options_(options),
      abort_(SYSCALL(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK), "eventfd")),
      random_(options.randomSeed),
      model_(options.mib, options.seed) {}

PageCheckClient::~PageCheckClient() {
  abort();
  std::lock_guard join(joinMutex_);
  if (thread_.joinable()) thread_.join();
}

void PageCheckClient::connect(const std::string& ip, int port, const std::optional<std::filesystem::path>& netns,
                              std::chrono::milliseconds timeout) {
  ErrorContext context("pagecheck client: connect to " + ip + ":" + std::to_string(port));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  if (::inet_pton(AF_INET, ip.c_str(), &address.sin_addr) != 1) fail(ErrorKind::InvalidInput, "not an IPv4 address");
  Fd connected;
  int lastErr = 0;
  auto attempts = [&] {
    auto deadline = Clock::now() + timeout;
    do {
      auto [fd, err] = tryConnect(address);
      if (fd) {
        connected = std::move(fd);
        return;
      }
      lastErr = err;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));  // the payload may still be filling its memory
    } while (Clock::now() < deadline);
  };
  // A socket belongs to the netns it was made in, whichever thread uses it later.
  if (netns) runInNetns(*netns, attempts);
  else attempts();
  if (!connected) failErrno(lastErr, "connect");
  socket_ = std::move(connected);
  received_.clear();
  std::lock_guard lock(mutex_);
  summary_.connectionError.reset();
}

bool PageCheckClient::failed() const {
  std::lock_guard lock(mutex_);
  return !summary_.ok();
}

bool PageCheckClient::recordViolation(const std::string& what) {
  std::lock_guard lock(mutex_);
  if (summary_.ok()) summary_.violation = what;
  return false;
}

bool PageCheckClient::recordConnectionError(const std::string& what) {
  std::lock_guard lock(mutex_);
  if (summary_.ok()) summary_.connectionError = what;
  return false;
}

std::optional<std::string> PageCheckClient::request(const std::string& line) {
  if (!socket_) {
    recordConnectionError("not connected");
    return std::nullopt;
  }
  std::string out = line + "\n";
  auto started = Clock::now();
  for (size_t sent = 0; sent < out.size();) {
    ssize_t n = ::send(socket_.get(), out.data() + sent, out.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      recordConnectionError("sending `" + line + "`: " + std::strerror(errno));
      return std::nullopt;
    }
    sent += static_cast<size_t>(n);
  }
  auto deadline = started + options_.replyTimeout;
  size_t end;
  while ((end = received_.find('\n')) == std::string::npos) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) {
      recordConnectionError("no reply to `" + line + "` within " + std::to_string(options_.replyTimeout.count()) +
                            " ms");
      return std::nullopt;
    }
    pollfd fds[2] = {{socket_.get(), POLLIN, 0}, {abort_.get(), POLLIN, 0}};
    int ready = ::poll(fds, 2, static_cast<int>(std::min<int64_t>(left, 1000)));
    if (ready < 0 && errno == EINTR) continue;
    if (ready < 0) failErrno(errno, "poll");
    if (fds[1].revents) {
      recordConnectionError("aborted while waiting for the reply to `" + line + "`");
      return std::nullopt;
    }
    if (!fds[0].revents) continue;
    char buf[4096];
    ssize_t n = ::recv(socket_.get(), buf, sizeof buf, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      recordConnectionError(std::string(n == 0 ? "connection closed by the payload" : std::strerror(errno)) +
                            " while waiting for the reply to `" + line + "`");
      return std::nullopt;
    }
    received_.append(buf, static_cast<size_t>(n));
  }
  std::string reply = received_.substr(0, end);
  received_.erase(0, end + 1);
  double ms = std::chrono::duration<double, std::milli>(Clock::now() - started).count();
  std::lock_guard lock(mutex_);
  summary_.longestReplyMs = std::max(summary_.longestReplyMs, ms);
  return reply;
}

bool PageCheckClient::expectReply(const std::string& request, const std::string& reply, const std::string& form) {
  return recordViolation("`" + request + "` answered `" + reply + "`, expected `" + form + "`");
}

std::optional<std::string> PageCheckClient::rawRequest(const std::string& line) { return request(line); }

bool PageCheckClient::write(uint64_t page) {
  if (failed()) return false;
  uint64_t version;
  {
    std::lock_guard lock(mutex_);
    version = model_.nextVersion(page);
  }
  auto line = "W " + std::to_string(page) + " " + std::to_string(version);
  auto reply = request(line);
  if (!reply) return false;
  auto words = wordsOf(*reply);
  std::optional<uint64_t> counter;
  if (words.size() != 2 || words[0] != "ok" || !(counter = numberOf(words[1]))) {
    return expectReply(line, *reply, "ok <counter>");
  }
  std::lock_guard lock(mutex_);
  if (auto wrong = model_.acknowledge(page, version, *counter)) {
    if (summary_.ok()) summary_.violation = *wrong;
    return false;
  }
  summary_.acknowledged = model_.acknowledged();
  return true;
}

bool PageCheckClient::read(uint64_t page) {
  if (failed()) return false;
  auto line = "R " + std::to_string(page);
  auto reply = request(line);
  if (!reply) return false;
  auto words = wordsOf(*reply);
  std::optional<uint64_t> echoed, version, checksum;
  if (words.size() != 4 || words[0] != "page" || !(echoed = numberOf(words[1])) || *echoed != page ||
      !(version = numberOf(words[2])) || !(checksum = numberOf(words[3], 16))) {
    return expectReply(line, *reply, "page " + std::to_string(page) + " <version> <checksum>");
  }
  std::lock_guard lock(mutex_);
  if (auto wrong = model_.checkRead(page, *version, *checksum)) {
    if (summary_.ok()) summary_.violation = *wrong;
    return false;
  }
  ++summary_.reads;
  return true;
}

bool PageCheckClient::step() {
  uint64_t writePage, readPage;
  {
    std::lock_guard lock(mutex_);
    writePage = std::uniform_int_distribution<uint64_t>(0, model_.pages() - 1)(random_);
    // Half the reads check a page written before (where a lost write
    // shows), half any page (where a lost or zeroed original page shows).
    const auto& written = model_.written();
    if (!written.empty() && random_() % 2 == 0) {
      readPage = written[std::uniform_int_distribution<size_t>(0, written.size() - 1)(random_)];
    } else {
      readPage = std::uniform_int_distribution<uint64_t>(0, model_.pages() - 1)(random_);
    }
  }
  if (!write(writePage) || !read(readPage)) return false;
  std::lock_guard lock(mutex_);
  ++summary_.steps;
  return true;
}

PageCheckSummary PageCheckClient::runFor(std::chrono::milliseconds duration) {
  auto until = Clock::now() + duration;
  while (Clock::now() < until && step()) {
  }
  return summary();
}

bool PageCheckClient::verifyWritten() {
  std::vector<uint64_t> pages;
  {
    std::lock_guard lock(mutex_);
    pages = model_.written();
  }
  for (auto page : pages) {
    if (!read(page)) return false;
  }
  return !failed();
}

bool PageCheckClient::verifyCount() {
  if (failed()) return false;
  auto reply = request("C");
  if (!reply) return false;
  auto words = wordsOf(*reply);
  std::optional<uint64_t> counter;
  if (words.size() != 2 || words[0] != "count" || !(counter = numberOf(words[1]))) {
    return expectReply("C", *reply, "count <counter>");
  }
  std::lock_guard lock(mutex_);
  if (auto wrong = model_.checkCount(*counter)) {
    if (summary_.ok()) summary_.violation = *wrong;
    return false;
  }
  return true;
}

std::optional<uint64_t> PageCheckClient::scan() {
  auto reply = request("S");
  if (!reply) return std::nullopt;
  auto words = wordsOf(*reply);
  std::optional<uint64_t> bad;
  if (words.size() != 2 || words[0] != "scan" || !(bad = numberOf(words[1]))) {
    expectReply("S", *reply, "scan <bad pages>");
    return std::nullopt;
  }
  return bad;
}

void PageCheckClient::runSteps() {
  while (!stopRequested_ && step()) {
  }
}

void PageCheckClient::start() {
  std::lock_guard join(joinMutex_);
  if (thread_.joinable()) fail(ErrorKind::Conflict, "pagecheck client: already stepping");
  stopRequested_ = false;
  thread_ = std::thread([this] { runSteps(); });
}

PageCheckSummary PageCheckClient::stop() {
  stopRequested_ = true;
  {
    std::lock_guard join(joinMutex_);
    if (thread_.joinable()) thread_.join();
  }
  return summary();
}

void PageCheckClient::abort() {
  stopRequested_ = true;
  uint64_t one = 1;
  // An eventfd's counter only saturates after 2^64-2 writes: this cannot fail.
  (void)!::write(abort_.get(), &one, sizeof one);
}

PageCheckSummary PageCheckClient::summary() const {
  std::lock_guard lock(mutex_);
  return summary_;
}

}  // namespace migrate::test
