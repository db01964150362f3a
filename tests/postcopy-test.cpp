// Issue 12: a migration, post-copy above all, must never lose a write the
// container acknowledged nor serve a wrong byte. A pagecheck payload keeps
// writing and acknowledging pages while a client in the lab's client netns
// checks every reply (tests/support/page-check-client.h), across the move.
// These are the fault-free runs; the fault tests build on the same client.
#include <catch2/catch.hpp>

#include "tests/support/harness.h"
#include "tests/support/page-check-client.h"

using namespace migrate;
using namespace migrate::test;
using nlohmann::json;
using namespace std::chrono_literals;

namespace {

constexpr int kPort = 7000;
constexpr uint64_t kMib = 256, kSeed = 20240612;

// `name`'s entry in the coordinator's list (exactly one expected).
json entryOf(ClusterGuard& cluster, const std::string& name) {
  std::vector<json> found;
  for (auto& c : cluster.migrateJson({"ps"})) {
    if (c["name"] == name) found.push_back(c);
  }
  REQUIRE(found.size() == 1);
  return found[0];
}

bool isFinal(const json& status) {
  std::string s = status.value("state", "");
  return s == "succeeded" || s == "rolled-back" || s == "failed" || s == "cancelled";
}

}  // namespace

TEST_CASE("a client writing and reading pages throughout a migration sees every acknowledged write, every byte right "
          "(stop-and-copy and post-copy)") {
  REQUIRE_PRIVILEGES();
  bool postCopy = GENERATE(false, true);
  INFO("postcopy: " << postCopy);
  ClusterGuard cluster(2);
  cluster.migrate({"run", "--on", "host1", "--name", "pc", "test", "/usr/local/bin/pagecheck", std::to_string(kPort),
                   std::to_string(kMib), std::to_string(kSeed)});
  REQUIRE(waitUntil([&] { return cluster.migrate({"logs", "pc"}).find("ready ") != std::string::npos; }, 60s));
  std::string ip = entryOf(cluster, "pc")["ip"];

  PageCheckClient client({.mib = kMib, .seed = kSeed});
  client.connect(ip, kPort, "/run/netns/client");
  client.start();
  REQUIRE(waitUntil([&] { return client.summary().steps >= 200; }, 30s));

  std::vector<std::string> move = {"pc", "--to", "host2", "--tcp-established", "--detach"};
  if (postCopy) move.push_back("--postcopy");
  std::string id = cluster.migrateJson(move).at("id");
  // Post-copy: the steps made while the pages phase ran were served on
  // host2 with part of the memory still on host1.
  std::optional<uint64_t> stepsAtPages;
  json final;
  REQUIRE(waitUntil([&] {
    final = cluster.migrateJson({"status", id});
    if (!stepsAtPages && final.value("phase", "") == "pages") stepsAtPages = client.summary().steps;
    return isFinal(final);
  }, 120s, 20ms));
  auto atEnd = client.summary();
  INFO(final.dump(2));
  CHECK(final["state"] == "succeeded");
  if (postCopy) {
    CHECK(final["stats"]["bytesPages"].get<uint64_t>() >= (kMib << 20));
    INFO("steps during the pages phase (" << final["stats"].value("pagesMs", 0.0) << " ms): from "
                                          << stepsAtPages.value_or(0) << " to " << atEnd.steps);
    CHECK(stepsAtPages.has_value());
  }

  // A few seconds more on host2, past any retransmission backoff of the move.
  auto end = std::chrono::steady_clock::now();
  CHECK(waitUntil([&] {
    return client.summary().steps >= atEnd.steps + 500 && std::chrono::steady_clock::now() - end >= 3s;
  }, 60s));
  auto summary = client.stop();
  INFO(summary.describe());
  CHECK(summary.ok());
  CHECK(summary.longestReplyMs < 60000);
  // Nothing lost behind the steps either: the counter is every acknowledged
  // write, every page written holds its last version, and the payload finds
  // every one of its pages consistent with its header.
  CHECK(client.verifyCount());
  CHECK(client.verifyWritten());
  CHECK(client.scan() == std::optional<uint64_t>(0));
  INFO(client.summary().describe());
  CHECK(client.summary().ok());

  auto after = entryOf(cluster, "pc");
  CHECK(after["host"] == "host2");
  CHECK(after["ip"] == ip);
  auto log = cluster.migrate({"logs", "pc"});
  CHECK(occurrences(log, "ready ") == 1);
  CHECK(occurrences(log, "client connected") == 1);
}
