// Outbound web hooks: each event is POSTed as JSON to every configured URL,
// signed with HMAC-SHA256 of the body (header X-Migrate-Signature:
// sha256=<hex>), the GitHub convention receivers already know how to check.
// Delivery runs on its own thread so a slow receiver never stalls a migration.
#pragma once

#include <condition_variable>
#include <deque>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

namespace migrate {

// "sha256=<lowercase hex HMAC-SHA256(secret, body)>".
std::string hookSignature(const std::string& body, const std::string& secret);

class Webhooks {
 public:
  // Each URL is http://host[:port][/path]. Throws Error(InvalidInput) on another form.
  Webhooks(std::vector<std::string> urls, std::string secret);
  ~Webhooks();
  Webhooks(const Webhooks&) = delete;
  Webhooks& operator=(const Webhooks&) = delete;

  // Queues {event, migration} for every URL.
  void post(const std::string& event, const nlohmann::json& migration);

 private:
  struct Target {
    std::string hostPort;  // "http://host:port"
    std::string path;
  };
  void deliverLoop();

  std::vector<Target> targets_;
  std::string secret_;
  std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<std::string> queue_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace migrate
