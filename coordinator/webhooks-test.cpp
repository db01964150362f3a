// Outbound web hooks against real httplib receivers on 127.0.0.1: the
// signature, the URLs accepted, delivery order past receivers that are down
// or failing, and the bound on what is held for a receiver that is stuck.
#include "coordinator/webhooks.h"

#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <mutex>
#include <thread>

#include "common/error.h"
#include "common/fd.h"
#include "tests/support/wait.h"

using namespace migrate;
using namespace std::chrono_literals;
using migrate::test::waitUntil;
using nlohmann::json;

namespace {

// An HTTP receiver of hook events on an ephemeral loopback port, answering
// `status`; `hold`, while set, makes it wait before answering.
class Receiver {
 public:
  explicit Receiver(std::string path, int status = 204) : path_(std::move(path)) {
    server_.Post(path_.c_str(), [this, status](const httplib::Request& req, httplib::Response& res) {
      entered_ = true;
      waitUntil([&] { return !hold.load(); }, 30s);
      std::lock_guard lock(mutex_);
      bodies_.push_back(req.body);
      signatures_.push_back(req.get_header_value("X-Migrate-Signature"));
      res.status = status;
    });
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
  }
  ~Receiver() {
    hold = false;
    server_.stop();
    thread_.join();
  }

  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_) + path_; }
  std::vector<std::string> bodies() {
    std::lock_guard lock(mutex_);
    return bodies_;
  }
  std::vector<std::string> signatures() {
    std::lock_guard lock(mutex_);
    return signatures_;
  }
  // The `id` of each event received, in order.
  std::vector<std::string> ids() {
    std::vector<std::string> out;
    for (auto& b : bodies()) out.push_back(json::parse(b)["migration"]["id"]);
    return out;
  }
  bool entered() const { return entered_; }

  std::atomic<bool> hold{false};

 private:
  std::string path_;
  httplib::Server server_;
  int port_ = 0;
  std::atomic<bool> entered_{false};
  std::mutex mutex_;  // guards bodies_ and signatures_
  std::vector<std::string> bodies_, signatures_;
  std::thread thread_;
};

// A loopback port nobody listens on: bound, then closed.
int closedPort() {
  Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  socklen_t length = sizeof addr;
  REQUIRE(::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&addr), &length) == 0);
  return ntohs(addr.sin_port);
}

json migration(const std::string& id) { return {{"id", id}, {"state", "succeeded"}}; }

}  // namespace

TEST_CASE("hooks: events are POSTed with an HMAC-SHA256 signature of the body") {
  // RFC 4231 test case 2.
  CHECK(hookSignature("what do ya want for nothing?", "Jefe") ==
        "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");

  Receiver receiver("/events");
  {
    Webhooks hooks({receiver.url()}, "hook-secret");
    hooks.post("migration.succeeded", migration("m-1"));
  }  // The destructor delivers what is queued.
  auto bodies = receiver.bodies();
  REQUIRE(bodies.size() == 1);
  auto body = json::parse(bodies[0]);
  CHECK(body["event"] == "migration.succeeded");
  CHECK(body["migration"]["id"] == "m-1");
  CHECK(receiver.signatures()[0] == hookSignature(bodies[0], "hook-secret"));
}

TEST_CASE("webhooks refuse a URL that is not plain http with a host", "[hooks]") {
  for (const char* url : {"https://127.0.0.1/events", "ftp://127.0.0.1/", "127.0.0.1:8080/events", "http://",
                          "http:///events"}) {
    INFO(url);
    try {
      Webhooks hooks({url}, "secret");
      FAIL("accepted");
    } catch (const Error& e) {
      CHECK(e.kind() == ErrorKind::InvalidInput);
      CHECK_THAT(e.what(), Catch::Matchers::Contains(url));
    }
  }
  // Without a path, events go to /.
  Receiver root("/");
  {
    Webhooks hooks({root.url().substr(0, root.url().size() - 1)}, "secret");
    hooks.post("migration.failed", migration("m-root"));
  }
  CHECK(root.ids() == std::vector<std::string>{"m-root"});
}

TEST_CASE("webhooks deliver every event in order to every URL past one that is down or failing", "[hooks]") {
  Receiver first("/first");
  Receiver failing("/failing", 500);
  std::string down = "http://127.0.0.1:" + std::to_string(closedPort()) + "/down";
  Webhooks hooks({down, first.url(), failing.url()}, "secret");
  std::vector<std::string> ids;
  for (int i = 0; i < 5; ++i) {
    ids.push_back("m-" + std::to_string(i));
    hooks.post("migration.succeeded", migration(ids.back()));
  }
  // While the hooks still run: delivery does not wait for the destructor.
  CHECK(waitUntil([&] { return first.ids().size() == ids.size() && failing.ids().size() == ids.size(); }, 30s));
  CHECK(first.ids() == ids);
  CHECK(failing.ids() == ids);
  for (auto& s : first.signatures()) CHECK(s.rfind("sha256=", 0) == 0);
}

TEST_CASE("webhooks hold at most 1000 events for a stuck receiver and drop the oldest", "[hooks]") {
  Receiver stuck("/events");
  stuck.hold = true;
  std::vector<std::string> expected;
  {
    Webhooks hooks({stuck.url()}, "secret");
    hooks.post("migration.succeeded", migration("m-0"));
    expected.push_back("m-0");
    // m-0 is in delivery (taken off the queue) while the rest queue up.
    REQUIRE(waitUntil([&] { return stuck.entered(); }, 10s));
    for (int i = 1; i <= 1004; ++i) hooks.post("migration.succeeded", migration("m-" + std::to_string(i)));
    for (int i = 5; i <= 1004; ++i) expected.push_back("m-" + std::to_string(i));
    stuck.hold = false;
  }  // The destructor delivers the 1000 kept.
  CHECK(stuck.ids() == expected);
}
