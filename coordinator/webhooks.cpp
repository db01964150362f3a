#include "coordinator/webhooks.h"

#include <httplib.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "common/error.h"
#include "common/log.h"

namespace migrate {

std::string hookSignature(const std::string& body, const std::string& secret) {
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  if (!HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
            reinterpret_cast<const unsigned char*>(body.data()), body.size(), mac, &length)) {
    fail("hooks: HMAC-SHA256 failed");
  }
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out = "sha256=";
  for (unsigned i = 0; i < length; ++i) {
    out += kDigits[mac[i] >> 4];
    out += kDigits[mac[i] & 0xf];
  }
  return out;
}

Webhooks::Webhooks(std::vector<std::string> urls, std::string secret) : secret_(std::move(secret)) {
  for (auto& url : urls) {
    // TODO(security): https receivers (the library is built with OpenSSL).
    constexpr std::string_view kScheme = "http://";
    if (url.rfind(kScheme, 0) != 0) fail(ErrorKind::InvalidInput, "hooks: `" + url + "` is not an http:// URL");
    auto slash = url.find('/', kScheme.size());
    Target t;
    t.hostPort = url.substr(0, slash);
    t.path = slash == std::string::npos ? "/" : url.substr(slash);
    if (t.hostPort.size() == kScheme.size()) fail(ErrorKind::InvalidInput, "hooks: `" + url + "` names no host");
    targets_.push_back(std::move(t));
  }
  if (!targets_.empty() && secret_.empty()) {
    logWarn("hooks: no --hook-secret-file; events are sent unsigned (empty HMAC key)");
  }
  thread_ = std::thread([this] { deliverLoop(); });
}

Webhooks::~Webhooks() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  changed_.notify_all();
  thread_.join();
}

void Webhooks::post(const std::string& event, const nlohmann::json& migration) {
  if (targets_.empty()) return;
  std::string body = nlohmann::json{{"event", event}, {"migration", migration}}.dump();
  {
    std::lock_guard lock(mutex_);
    // A receiver that is down must not make us hold events without bound.
    if (queue_.size() >= 1000) {
      logWarn("hooks: queue full; dropping the oldest event");
      queue_.pop_front();
    }
    queue_.push_back(std::move(body));
  }
  changed_.notify_all();
}

void Webhooks::deliverLoop() {
  for (;;) {
    std::string body;
    {
      std::unique_lock lock(mutex_);
      changed_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      // Events queued at shutdown are still delivered: they are few and
      // receivers rely on seeing the final state.
      if (queue_.empty()) return;
      body = std::move(queue_.front());
      queue_.pop_front();
    }
    httplib::Headers headers = {{"X-Migrate-Signature", hookSignature(body, secret_)}};
    for (auto& t : targets_) {
      httplib::Client client(t.hostPort);
      client.set_connection_timeout(std::chrono::seconds(3));
      client.set_read_timeout(std::chrono::seconds(5));
      client.set_write_timeout(std::chrono::seconds(5));
      auto result = client.Post(t.path.c_str(), headers, body, "application/json");
      if (!result) {
        logWarn("hooks: POST " + t.hostPort + t.path + " failed: " + httplib::to_string(result.error()));
      } else if (result->status >= 300) {
        logWarn("hooks: POST " + t.hostPort + t.path + " answered " + std::to_string(result->status));
      }
    }
  }
}

}  // namespace migrate
