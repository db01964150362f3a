// The HTTP API through a real httplib client (and the CLI's unix-socket
// client) against the real server on 127.0.0.1, over a coordinator wired to
// scripted agents.
#include "coordinator/http-api.h"

#include <httplib.h>

#include <catch2/catch.hpp>
#include <thread>

#include "coordinator/test-cluster.h"
#include "coordinator/webhooks.h"
#include "migrate/client.h"

using namespace migrate;
using namespace migrate::testing;
using namespace std::chrono_literals;
using nlohmann::json;

namespace {

constexpr const char* kToken = "s3cret-token";

struct Api {
  explicit Api(Cluster& cluster) : api(*cluster.coordinator, options(cluster)) {
    api.start();
    client = std::make_unique<httplib::Client>("127.0.0.1", api.tcpPort());
  }
  static HttpApiOptions options(Cluster& cluster) {
    HttpApiOptions o;
    o.tcpAddress = "127.0.0.1:0";
    o.unixSocket = cluster.dir.path() / "api.sock";
    o.token = kToken;
    return o;
  }
  httplib::Headers auth(const std::string& token = kToken) { return {{"Authorization", "Bearer " + token}}; }

  HttpApi api;
  std::unique_ptr<httplib::Client> client;
};

void checkError(const httplib::Result& result, int status, const std::string& kind) {
  REQUIRE(result);
  INFO(result->body);
  CHECK(result->status == status);
  json body = json::parse(result->body, nullptr, false);
  REQUIRE(body.is_object());
  CHECK(body["kind"] == kind);
  CHECK(body["error"].is_string());
}

}  // namespace

TEST_CASE("http: requests without the right bearer token get 401") {
  Cluster cluster(300ms);
  cluster.start();
  Api api(cluster);
  checkError(api.client->Get("/v1/hosts"), 401, "unauthorized");
  checkError(api.client->Get("/v1/hosts", api.auth("wrong")), 401, "unauthorized");
  checkError(api.client->Get("/v1/hosts", api.auth(std::string(kToken) + "x")), 401, "unauthorized");
  checkError(api.client->Post("/v1/migrations", "{}", "application/json"), 401, "unauthorized");
  checkError(api.client->Post("/v1/hooks/alertmanager", "{}", "application/json"), 401, "unauthorized");

  auto ok = api.client->Get("/v1/hosts", api.auth());
  REQUIRE(ok);
  CHECK(ok->status == 200);
  auto hosts = json::parse(ok->body);
  REQUIRE(hosts.size() == 3);
  CHECK(hosts[0]["name"] == "host1");
  CHECK(hosts[0]["up"] == true);
}

TEST_CASE("http: error kinds map to status codes") {
  Cluster cluster(200ms);
  cluster.agent("host1").addContainer("web", "running");
  cluster.agent("host2").setHandler("prepareReceive", [](proto::Request::Reader, proto::Reply::Builder reply) {
    std::this_thread::sleep_for(300ms);
    reply.setPort(40000);
    return true;
  });
  cluster.start();
  Api api(cluster);
  auto post = [&](const std::string& path, const std::string& body) {
    return api.client->Post(path.c_str(), api.auth(), body, "application/json");
  };

  checkError(api.client->Get("/v1/migrations/m-nope", api.auth()), 404, "not-found");
  checkError(api.client->Get("/v1/nothing-here", api.auth()), 404, "not-found");
  checkError(post("/v1/migrations", "not json"), 400, "invalid-input");
  checkError(post("/v1/migrations", R"({"container": 5, "target": "host2"})"), 400, "invalid-input");
  checkError(post("/v1/migrations", R"({"target": "host2"})"), 400, "invalid-input");
  checkError(post("/v1/migrations", R"({"container": "ghost", "target": "host2"})"), 404, "not-found");
  checkError(post("/v1/migrations", R"({"container": "web", "target": "host1"})"), 400, "invalid-input");
  checkError(api.client->Get("/v1/containers/ghost/logs?tail=x", api.auth()), 400, "invalid-input");

  auto started = post("/v1/migrations", R"({"container": "web", "target": "host2"})");
  REQUIRE(started);
  REQUIRE(started->status == 202);
  std::string id = json::parse(started->body)["id"];
  checkError(post("/v1/migrations", R"({"container": "web", "target": "host3"})"), 409, "conflict");
  auto status = api.client->Get(("/v1/migrations/" + id).c_str(), api.auth());
  REQUIRE(status);
  CHECK(status->status == 200);
  for (auto key : {"id", "container", "source", "target", "state", "phase", "bytesDone", "bytesTotal",
                   "rateBytesPerSec", "etaSeconds", "error", "errorKind", "stats", "createdAt", "finishedAt"}) {
    CHECK(json::parse(status->body).contains(key));
  }
  cluster.coordinator->waitIdle();
  checkError(post("/v1/migrations/" + id + "/cancel", "{}"), 409, "conflict");
  auto history = api.client->Get("/v1/migrations?limit=5", api.auth());
  REQUIRE(history);
  CHECK(json::parse(history->body)[0]["id"] == id);
  CHECK(json::parse(history->body)[0]["state"] == "succeeded");

  // A host that stopped answering: Disconnected -> 502.
  cluster.agent("host3").setSilent(true);
  std::this_thread::sleep_for(800ms);
  checkError(post("/v1/containers", R"({"host": "host3", "name": "db", "image": "redis"})"), 502, "disconnected");
  checkError(post("/v1/containers", R"({"host": "host9", "name": "db", "image": "redis"})"), 404, "not-found");
  checkError(post("/v1/containers", R"({"host": "host1", "name": "web", "image": "redis"})"), 409, "conflict");

  auto created = post("/v1/containers", R"({"host": "host1", "name": "db", "image": "redis", "args": ["redis-server"]})");
  REQUIRE(created);
  CHECK(created->status == 201);
  auto logs = api.client->Get("/v1/containers/db/logs?tail=10", api.auth());
  REQUIRE(logs);
  CHECK(json::parse(logs->body)["logs"] == "hello\n");
  CHECK(httpStatusFor(ErrorKind::Overloaded) == 503);
  CHECK(httpStatusFor(ErrorKind::Failed) == 500);
}

TEST_CASE("http: the unix socket serves the CLI's client, and alertmanager alerts start evacuations") {
  Cluster cluster(300ms);
  cluster.agent("host1").addContainer("web", "running");
  cluster.start();
  Api api(cluster);
  auto tokenFile = cluster.dir.path() / "token";
  writeFileAtomic(tokenFile, std::string(kToken) + "\n", 0600);

  Client client({"unix:" + (cluster.dir.path() / "api.sock").string(), tokenFile.string()});
  CHECK(listHosts(client).size() == 3);
  Client anonymous({"unix:" + (cluster.dir.path() / "api.sock").string(), ""});
  if (!std::getenv("MIGRATE_TOKEN_FILE")) CHECK_THROWS_AS(listHosts(anonymous), Error);
  try {
    migrationStatus(client, "m-missing");
    FAIL("no error");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::NotFound);
  }

  json alert = {{"version", "4"},
                {"status", "firing"},
                {"alerts",
                 {{{"status", "firing"}, {"labels", {{"alertname", "DiskFailing"}, {"instance", "host1:9100"}, {"action", "evacuate"}}}},
                  {{"status", "firing"}, {"labels", {{"alertname", "Other"}, {"host", "host2"}}}}}}};
  auto hook = api.client->Post("/v1/hooks/alertmanager", api.auth(), alert.dump(), "application/json");
  REQUIRE(hook);
  INFO(hook->body);
  CHECK(hook->status == 200);
  json body = json::parse(hook->body);
  REQUIRE(body["evacuations"].size() == 1);
  CHECK(body["evacuations"][0]["host"] == "host1");
  CHECK(body["evacuations"][0]["migrations"].size() == 1);
  CHECK(body["ignored"].size() == 1);
  cluster.coordinator->waitIdle();
  auto m = migrationStatus(client, body["evacuations"][0]["migrations"][0]);
  CHECK(m["state"] == "succeeded");
}

TEST_CASE("hooks: events are POSTed with an HMAC-SHA256 signature of the body") {
  // RFC 4231 test case 2.
  CHECK(hookSignature("what do ya want for nothing?", "Jefe") ==
        "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");

  httplib::Server receiver;
  std::mutex mutex;
  std::vector<std::pair<std::string, std::string>> received;  // body, signature
  receiver.Post("/events", [&](const httplib::Request& req, httplib::Response& res) {
    std::lock_guard lock(mutex);
    received.emplace_back(req.body, req.get_header_value("X-Migrate-Signature"));
    res.status = 204;
  });
  int port = receiver.bind_to_any_port("127.0.0.1");
  std::thread serving([&] { receiver.listen_after_bind(); });
  {
    Webhooks hooks({"http://127.0.0.1:" + std::to_string(port) + "/events"}, "hook-secret");
    hooks.post("migration.succeeded", {{"id", "m-1"}, {"state", "succeeded"}});
  }  // The destructor delivers what is queued.
  receiver.stop();
  serving.join();
  REQUIRE(received.size() == 1);
  auto body = json::parse(received[0].first);
  CHECK(body["event"] == "migration.succeeded");
  CHECK(body["migration"]["id"] == "m-1");
  CHECK(received[0].second == hookSignature(received[0].first, "hook-secret"));
}
