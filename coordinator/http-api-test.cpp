// The HTTP API through a real httplib client (and the CLI's unix-socket
// client) against the real server on 127.0.0.1, over a coordinator wired to
// scripted agents.
#include "coordinator/http-api.h"

#include <arpa/inet.h>
#include <httplib.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <catch2/catch.hpp>
#include <fstream>
#include <thread>

#include "common/fd.h"
#include "common/subprocess.h"

#include "coordinator/test-cluster.h"
#include "migrate/client.h"
#include "tests/support/wait.h"

using namespace migrate;
using namespace migrate::testing;
using migrate::test::waitUntil;
using namespace std::chrono_literals;
using nlohmann::json;
using Catch::Matchers::Contains;
using Clock = std::chrono::steady_clock;

namespace {

constexpr const char* kToken = "s3cret-token";

struct Api {
  explicit Api(Cluster& cluster, const std::function<void(HttpApiOptions&)>& adjust = {})
      : api(*cluster.coordinator, options(cluster, adjust)) {
    api.start();
    client = std::make_unique<httplib::Client>("127.0.0.1", api.tcpPort());
  }
  static HttpApiOptions options(Cluster& cluster, const std::function<void(HttpApiOptions&)>& adjust) {
    HttpApiOptions o;
    o.tcpAddress = "127.0.0.1:0";
    o.unixSocket = cluster.dir.path() / "api.sock";
    o.token = kToken;
    o.insecureHttp = true;
    if (adjust) adjust(o);
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

// A raw TCP connection to the API from `source`: every 127/8 address is
// loopback, so tests can be several clients.
Fd connectFrom(const std::string& source, int port) {
  Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  REQUIRE(fd);
  sockaddr_in local{};
  local.sin_family = AF_INET;
  ::inet_pton(AF_INET, source.c_str(), &local.sin_addr);
  REQUIRE(::bind(fd.get(), reinterpret_cast<sockaddr*>(&local), sizeof local) == 0);
  sockaddr_in remote{};
  remote.sin_family = AF_INET;
  remote.sin_port = htons(static_cast<uint16_t>(port));
  ::inet_pton(AF_INET, "127.0.0.1", &remote.sin_addr);
  REQUIRE(::connect(fd.get(), reinterpret_cast<sockaddr*>(&remote), sizeof remote) == 0);
  return fd;
}

bool sendAll(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n <= 0) return false;
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

// What arrives until the server closes, or until `timeout`.
std::string readUntilClosed(int fd, std::chrono::milliseconds timeout) {
  std::string out;
  auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 50) <= 0) continue;
    char buffer[65536];
    ssize_t n = ::recv(fd, buffer, sizeof buffer, 0);
    if (n <= 0) break;
    out.append(buffer, static_cast<size_t>(n));
  }
  return out;
}

std::string rawRequest(const std::string& method, const std::string& path, const std::string& extraHeaders = "",
                       const std::string& body = "") {
  return method + " " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + kToken +
         "\r\nConnection: close\r\n" + extraHeaders +
         (body.empty() ? "" : "Content-Length: " + std::to_string(body.size()) + "\r\n") + "\r\n" + body;
}

double secondsSince(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

size_t residentBytes() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoul(line.substr(6)) * 1024;
  }
  return 0;
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
  // The migration stays in prepareReceive until the checks of a running one are done.
  std::atomic<bool> holdReceive{true};
  Cluster cluster(200ms);
  cluster.agent("host1").addContainer("web", "running");
  cluster.agent("host2").setHandler("prepareReceive", [&](proto::Request::Reader, proto::Reply::Builder reply) {
    waitUntil([&] { return !holdReceive.load(); }, 10s);
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
  checkError(post("/v1/migrations", R"({"container": "web", "target": "host2", "postCopy": "yes"})"), 400,
             "invalid-input");
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
  holdReceive = false;
  cluster.coordinator->waitIdle();
  checkError(post("/v1/migrations/" + id + "/cancel", "{}"), 409, "conflict");
  auto history = api.client->Get("/v1/migrations?limit=5", api.auth());
  REQUIRE(history);
  CHECK(json::parse(history->body)[0]["id"] == id);
  CHECK(json::parse(history->body)[0]["state"] == "succeeded");

  // A host that stopped answering: Disconnected -> 502.
  cluster.agent("host3").setSilent(true);
  REQUIRE(waitUntil([&] { return !cluster.registry->isUp("host3"); }, 10s));
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

  Client client({"unix:" + (cluster.dir.path() / "api.sock").string(), tokenFile.string(), ""});
  CHECK(listHosts(client).size() == 3);
  Client anonymous({"unix:" + (cluster.dir.path() / "api.sock").string(), "", ""});
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

TEST_CASE("http: run passes --userns and --user to the agent, and containers show their user namespace mapping") {
  Cluster cluster(300ms);
  cluster.agent("host1").addContainer("web", "running", IdMapping{1u << 30, kIdMappingSize});
  cluster.agent("host1").addContainer("root-one", "running");
  std::mutex mutex;
  std::map<std::string, std::pair<bool, std::string>> runs;  // name -> hostUserns, user
  cluster.agent("host2").setHandler("runContainer", [&](proto::Request::Reader request, proto::Reply::Builder) {
    auto run = request.getRunContainer();
    std::lock_guard lock(mutex);
    runs[run.getName().cStr()] = {run.getHostUserns(), run.getUser().cStr()};
    return false;
  });
  cluster.start();
  Api api(cluster);
  auto tokenFile = cluster.dir.path() / "token";
  writeFileAtomic(tokenFile, std::string(kToken) + "\n", 0600);
  Client client({"unix:" + (cluster.dir.path() / "api.sock").string(), tokenFile.string(), ""});

  RunOptions own;
  own.host = "host2";
  own.name = "own";
  own.image = "test";
  runContainer(client, own);
  RunOptions hosts = own;
  hosts.name = "hosts";
  hosts.userns = "host";
  hosts.user = "1000:100";
  runContainer(client, hosts);
  {
    std::lock_guard lock(mutex);
    CHECK(runs.at("own") == std::pair<bool, std::string>(false, ""));
    CHECK(runs.at("hosts") == std::pair<bool, std::string>(true, "1000:100"));
  }
  checkError(api.client->Post("/v1/containers", api.auth(),
                              R"({"host": "host2", "name": "x", "image": "test", "userns": "private"})",
                              "application/json"),
             400, "invalid-input");

  // `migrate ps --output json` prints this list as it is.
  std::map<std::string, json> mappings;
  for (auto& c : listContainers(client)) mappings[c["name"]] = c.value("idMapping", json("missing"));
  REQUIRE(mappings.count("web"));
  REQUIRE(mappings.count("root-one"));
  CHECK(mappings["web"] == json{{"hostId", 1u << 30}, {"size", kIdMappingSize}});
  CHECK(mappings["root-one"].is_null());
  auto hostsJson = listHosts(client);
  for (auto& h : hostsJson) {
    if (h["name"] != "host1") continue;
    for (auto& c : h["containers"]) CHECK(c.contains("idMapping"));
  }
}

TEST_CASE("http: clients trickling header lines are cut with 408 and do not delay other requests") {
  Cluster cluster(300ms);
  cluster.start();
  Api api(cluster, [](HttpApiOptions& o) { o.limits.requestTimeout = 1500ms; });
  // More than httplib's own pool of 8 workers, under the per-client cap.
  constexpr int kTricklers = 12;
  std::vector<Fd> tricklers;
  auto start = Clock::now();
  for (int i = 0; i < kTricklers; ++i) {
    tricklers.push_back(connectFrom("127.0.0.2", api.api.tcpPort()));
    REQUIRE(sendAll(tricklers.back().get(), "GET /v1/hosts HTTP/1.1\r\nHost: 127.0.0.1\r\n"));
  }
  std::vector<std::string> answers(kTricklers);
  std::vector<double> answeredAfter(kTricklers, -1);
  std::thread trickle([&] {
    // One header line each every 300 ms: far within any per-read timeout.
    auto nextLine = Clock::now();
    while (secondsSince(start) < 6) {
      std::vector<pollfd> fds;
      for (auto& fd : tricklers) fds.push_back({fd.get(), POLLIN, 0});
      ::poll(fds.data(), fds.size(), 50);
      bool open = false;
      for (int i = 0; i < kTricklers; ++i) {
        if (!tricklers[i]) continue;
        open = true;
        if (fds[i].revents) {
          char buffer[4096];
          ssize_t n = ::recv(tricklers[i].get(), buffer, sizeof buffer, 0);
          if (n > 0) {
            if (answers[i].empty()) answeredAfter[i] = secondsSince(start);
            answers[i].append(buffer, static_cast<size_t>(n));
          } else {
            tricklers[i].reset();
          }
        }
      }
      if (!open) return;
      if (Clock::now() >= nextLine) {
        nextLine += 300ms;
        for (auto& fd : tricklers) {
          if (fd) sendAll(fd.get(), "X-Slow: still here\r\n");
        }
      }
    }
  });

  // Every trickler holds a slot before the request that must not wait for them.
  REQUIRE(waitUntil([&] { return api.api.tcpOccupancy().open == kTricklers; }, 5s));
  auto before = Clock::now();
  auto ok = api.client->Get("/v1/hosts", api.auth());
  double took = secondsSince(before);
  trickle.join();
  REQUIRE(ok);
  CHECK(ok->status == 200);
  CHECK(took < 0.5);
  for (int i = 0; i < kTricklers; ++i) {
    INFO("trickler " << i << ": " << answers[i]);
    CHECK(answers[i].rfind("HTTP/1.1 408 ", 0) == 0);
    CHECK_THAT(answers[i], Contains("request not complete within 1500 ms"));
    CHECK(answeredAfter[i] > 1.0);
    CHECK(answeredAfter[i] < 2.5);
  }
}

TEST_CASE("http: connections over the per-client or the total cap get 429 naming the cap") {
  Cluster cluster(300ms);
  cluster.start();
  Api api(cluster, [](HttpApiOptions& o) {
    o.limits.maxConnectionsPerClient = 3;
    o.limits.maxConnections = 5;
    o.limits.requestTimeout = 4s;
    o.limits.admissionWait = 300ms;
  });
  int port = api.api.tcpPort();
  std::vector<Fd> held;
  for (int i = 0; i < 3; ++i) held.push_back(connectFrom("127.0.0.1", port));
  REQUIRE(waitUntil([&] { return api.api.tcpOccupancy().open == 3; }, 5s));

  auto refused = api.client->Get("/v1/hosts", api.auth());
  checkError(refused, 429, "overloaded");
  CHECK_THAT(json::parse(refused->body)["error"].get<std::string>(), Contains("limit 3 per client"));
  CHECK(refused->get_header_value("Retry-After") == "1");

  // Another client is served meanwhile.
  Fd other = connectFrom("127.0.0.2", port);
  sendAll(other.get(), rawRequest("GET", "/v1/hosts"));
  CHECK(readUntilClosed(other.get(), 2s).rfind("HTTP/1.1 200 ", 0) == 0);

  held.push_back(connectFrom("127.0.0.3", port));
  held.push_back(connectFrom("127.0.0.3", port));
  REQUIRE(waitUntil([&] { return api.api.tcpOccupancy().open == 5; }, 5s));
  Fd fourth = connectFrom("127.0.0.4", port);
  sendAll(fourth.get(), rawRequest("GET", "/v1/hosts"));
  std::string answer = readUntilClosed(fourth.get(), 2s);
  CHECK(answer.rfind("HTTP/1.1 429 ", 0) == 0);
  CHECK_THAT(answer, Contains("limit 5 in all"));

  // A connection over the cap waits a moment for a slot before its 429.
  Fd waiting = connectFrom("127.0.0.4", port);
  sendAll(waiting.get(), rawRequest("GET", "/v1/hosts"));
  REQUIRE(waitUntil([&] { return api.api.tcpOccupancy().waiting == 1; }, 5s));
  held.pop_back();
  CHECK(readUntilClosed(waiting.get(), 2s).rfind("HTTP/1.1 200 ", 0) == 0);

  // Closed connections give their slots back.
  held.clear();
  REQUIRE(waitUntil([&] { return api.api.tcpOccupancy().open == 0; }, 5s));
  auto again = api.client->Get("/v1/hosts", api.auth());
  REQUIRE(again);
  CHECK(again->status == 200);
}

TEST_CASE("http: 200 requests at once from one client are all served") {
  Cluster cluster(300ms);
  cluster.start();
  Api api(cluster);
  std::atomic<int> ok{0};
  std::vector<std::thread> clients;
  for (int i = 0; i < 200; ++i) {
    clients.emplace_back([&] {
      httplib::Client client("127.0.0.1", api.api.tcpPort());
      auto r = client.Get("/v1/hosts", api.auth());
      if (r && r->status == 200 && json::parse(r->body).size() == 3) ++ok;
    });
  }
  for (auto& t : clients) t.join();
  CHECK(ok == 200);
}

TEST_CASE("http: bodies over 1 MiB get 413, compressed bodies 415, oversized headers 431") {
  Cluster cluster(300ms);
  cluster.start();
  Api api(cluster);
  int port = api.api.tcpPort();

  std::string big(2 << 20, ' ');
  big.front() = '{';
  big.back() = '}';
  auto start = Clock::now();
  auto r = api.client->Post("/v1/migrations", api.auth(), big, "application/json");
  checkError(r, 413, "invalid-input");
  CHECK_THAT(json::parse(r->body)["error"].get<std::string>(), Contains("over the limit of 1 MiB"));
  CHECK(secondsSince(start) < 3);

  // Declared and never sent: refused on the header alone, at once.
  Fd declared = connectFrom("127.0.0.1", port);
  start = Clock::now();
  sendAll(declared.get(), rawRequest("POST", "/v1/migrations", "Content-Length: 1000000000000\r\n"));
  std::string answer = readUntilClosed(declared.get(), 3s);
  CHECK(answer.rfind("HTTP/1.1 413 ", 0) == 0);
  CHECK(secondsSince(start) < 1);

  // Chunked: counted as it arrives.
  Fd chunked = connectFrom("127.0.0.1", port);
  sendAll(chunked.get(), rawRequest("POST", "/v1/migrations", "Transfer-Encoding: chunked\r\n"));
  std::string chunk = "10000\r\n" + std::string(0x10000, ' ') + "\r\n";
  for (int i = 0; i < 32 && sendAll(chunked.get(), chunk); ++i) {
  }
  answer = readUntilClosed(chunked.get(), 3s);
  CHECK(answer.rfind("HTTP/1.1 413 ", 0) == 0);
  CHECK_THAT(answer, Contains("over the limit of 1 MiB"));

  Fd gzip = connectFrom("127.0.0.1", port);
  sendAll(gzip.get(), rawRequest("POST", "/v1/migrations", "Content-Encoding: gzip\r\n", "xxxx"));
  answer = readUntilClosed(gzip.get(), 3s);
  CHECK(answer.rfind("HTTP/1.1 415 ", 0) == 0);
  CHECK_THAT(answer, Contains("Content-Encoding `gzip`"));

  Fd headers = connectFrom("127.0.0.1", port);
  std::string many;
  for (int i = 0; i < 100; ++i) many += "X-Filler-" + std::to_string(i) + ": " + std::string(1000, 'x') + "\r\n";
  sendAll(headers.get(), rawRequest("GET", "/v1/hosts", many));
  answer = readUntilClosed(headers.get(), 3s);
  CHECK(answer.rfind("HTTP/1.1 431 ", 0) == 0);
  CHECK_THAT(answer, Contains("over the limit of 64 KiB"));

  // Under the limits, the same connection handling serves as before.
  std::string fine = R"({"container": ")" + std::string(900 * 1024, 'a') + R"(", "target": "host2"})";
  auto ok = api.client->Post("/v1/migrations", api.auth(), fine, "application/json");
  checkError(ok, 404, "not-found");
}

TEST_CASE("http: JSON nested deeper than 64 levels is refused before it is parsed") {
  Cluster cluster(300ms);
  cluster.start();
  Api api(cluster);
  size_t residentBefore = residentBytes();
  auto start = Clock::now();
  auto r = api.client->Post("/v1/migrations", api.auth(), std::string(1000000, '['), "application/json");
  checkError(r, 400, "invalid-input");
  CHECK_THAT(json::parse(r->body)["error"].get<std::string>(), Contains("nests deeper than the limit of 64 levels"));
  CHECK(secondsSince(start) < 2);
  // Ten million levels do not fit the body limit in the first place: the
  // answer comes after the first bytes (a client still sending 10 MB after
  // it may see a reset: the server drains only so much).
  Fd deeper = connectFrom("127.0.0.1", api.api.tcpPort());
  sendAll(deeper.get(), rawRequest("POST", "/v1/migrations", "Content-Length: 10000000\r\n") +
                            std::string(1 << 20, '['));
  CHECK(readUntilClosed(deeper.get(), 3s).rfind("HTTP/1.1 413 ", 0) == 0);
  CHECK(residentBytes() < residentBefore + (64 << 20));

  // 64 levels are parsed (and then refused for the field's type).
  std::string nested = R"({"container": )" + std::string(63, '[') + std::string(63, ']') + R"(, "target": "host2"})";
  r = api.client->Post("/v1/migrations", api.auth(), nested, "application/json");
  checkError(r, 400, "invalid-input");
  CHECK_THAT(json::parse(r->body)["error"].get<std::string>(), Contains("wrong type"));
  // Brackets inside strings are not nesting.
  CHECK(parseJsonBody(R"({"a": "[[[[\"[[[[", "b": [[1]]})", 3)["b"][0][0] == 1);
  CHECK_THROWS_WITH(parseJsonBody(R"({"a": "]]]]", "b": [[1]]})", 2), Contains("deeper than the limit of 2"));
}

namespace {

// A CA, and a certificate it signed for IP 127.0.0.1, made with openssl(1).
struct TestPki {
  TestPki() {
    makeCa("ca");
    makeCa("other-ca");
    auto ext = dir.path() / "server.ext";
    writeFileAtomic(ext, "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n", 0600);
    openssl({"req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
             path("server.key"), "-out", path("server.csr"), "-subj", "/CN=127.0.0.1"});
    openssl({"x509", "-req", "-in", path("server.csr"), "-CA", path("ca.crt"), "-CAkey", path("ca.key"),
             "-CAcreateserial", "-days", "2", "-extfile", ext.string(), "-out", path("server.crt")});
  }
  void makeCa(const std::string& name) {
    openssl({"req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
             "-subj", "/CN=migrate test " + name, "-keyout", path(name + ".key"), "-out", path(name + ".crt")});
  }
  void openssl(std::vector<std::string> args) {
    args.insert(args.begin(), "openssl");
    auto r = runCapture(SubprocessOptions::of(args));
    INFO(r.err);
    REQUIRE(r.status == 0);
  }
  std::string path(const std::string& name) const { return (dir.path() / name).string(); }
  TempDir dir{"/tmp", "http-pki"};
};

}  // namespace

TEST_CASE("http: the TCP listener serves TLS, verified against the CA; plain HTTP there is refused") {
  Cluster cluster(300ms);
  cluster.start();
  TestPki pki;
  Api api(cluster, [&](HttpApiOptions& o) {
    o.insecureHttp = false;
    o.tls = TlsFiles{pki.path("server.crt"), pki.path("server.key")};
    o.limits.requestTimeout = 1s;
  });
  int port = api.api.tcpPort();
  // A handshake that never completes is cut within the request timeout.
  Fd silent = connectFrom("127.0.0.2", port);
  Fd stalled = connectFrom("127.0.0.2", port);
  sendAll(stalled.get(), std::string("\x16\x03\x01", 3));
  auto start = Clock::now();
  CHECK(readUntilClosed(silent.get(), 3s).empty());
  CHECK(readUntilClosed(stalled.get(), 3s).empty());
  CHECK(secondsSince(start) < 2);
  auto tlsClient = [&](const std::string& host, const std::string& ca) {
    auto client = std::make_unique<httplib::SSLClient>(host, port);
    client->enable_server_certificate_verification(true);
    if (!ca.empty()) client->set_ca_cert_path(ca.c_str());
    client->set_connection_timeout(2s);
    return client;
  };

  auto ok = tlsClient("127.0.0.1", pki.path("ca.crt"))->Get("/v1/hosts", api.auth());
  REQUIRE(ok);
  CHECK(ok->status == 200);
  CHECK(json::parse(ok->body).size() == 3);

  for (auto ca : {pki.path("other-ca.crt"), std::string()}) {
    INFO("CA: " << (ca.empty() ? "the system's" : ca));
    auto refused = tlsClient("127.0.0.1", ca)->Get("/v1/hosts", api.auth());
    REQUIRE_FALSE(refused);
    CHECK(refused.error() == httplib::Error::SSLServerVerification);
  }
  // The certificate names 127.0.0.1, not localhost.
  auto wrongName = tlsClient("localhost", pki.path("ca.crt"))->Get("/v1/hosts", api.auth());
  CHECK_FALSE(wrongName);

  auto plain = api.client->Get("/v1/hosts", api.auth());
  checkError(plain, 400, "invalid-input");
  CHECK_THAT(json::parse(plain->body)["error"].get<std::string>(), Contains("serves HTTPS"));

  // The CLI's client: https:// with --ca.
  auto tokenFile = cluster.dir.path() / "token";
  writeFileAtomic(tokenFile, std::string(kToken) + "\n", 0600);
  std::string address = "https://127.0.0.1:" + std::to_string(port);
  Client cli({address, tokenFile.string(), pki.path("ca.crt")});
  CHECK(listHosts(cli).size() == 3);
  Client untrusting({address, tokenFile.string(), pki.path("other-ca.crt")});
  CHECK_THROWS_WITH(listHosts(untrusting), Contains("does not verify") && Contains("--ca"));

  // TCP without TLS needs asking for; a key that is not the certificate's is refused.
  HttpApi bare(*cluster.coordinator, Api::options(cluster, [](HttpApiOptions& o) {
    o.insecureHttp = false;
    o.unixSocket.reset();
  }));
  CHECK_THROWS_WITH(bare.start(), Contains("in clear"));
  HttpApi mismatched(*cluster.coordinator, Api::options(cluster, [&](HttpApiOptions& o) {
    o.insecureHttp = false;
    o.unixSocket.reset();
    o.tls = TlsFiles{pki.path("server.crt"), pki.path("ca.key")};
  }));
  CHECK_THROWS_WITH(mismatched.start(), Contains("private key") && Contains("mismatch"));
}

TEST_CASE("http: recover and abandon act on a paused post-copy migration, a bad `keep` is 400, another state 409") {
  Cluster cluster(300ms);
  cluster.agent("host1").addContainer("web", "running");
  cluster.agent("host1").setHandler("finishPostCopy", [&](proto::Request::Reader, proto::Reply::Builder reply) {
    reply.setOk(false);
    reply.setErrorKind(proto::ErrorKind::FAILED);
    reply.setErrorMessage("page transfer failed: page channel to host2 reset");
    return true;
  });
  cluster.agent("host1").setRelay(proto::PostCopyRelayState::FAILED, "criu page server died");
  cluster.agent("host2").setRelay(proto::PostCopyRelayState::CUT, "no page source", 2);
  cluster.start();
  Api api(cluster);
  auto post = [&](const std::string& path, const std::string& body, const std::string& token = kToken) {
    return api.client->Post(path.c_str(), api.auth(token), body, "application/json");
  };

  MigrationOptions options;
  options.postCopy = true;
  std::string id = cluster.coordinator->startMigration({"web", "host2", options});
  REQUIRE(waitUntil([&] { return cluster.journal->get(id).state == MigrationState::Paused; }, 10s));
  auto shown = api.client->Get(("/v1/migrations/" + id).c_str(), api.auth());
  REQUIRE(shown);
  CHECK(json::parse(shown->body)["state"] == "paused");
  CHECK(json::parse(shown->body)["stats"]["pausedReason"].is_string());

  std::string base = "/v1/migrations/" + id;
  checkError(post(base + "/recover", "{}", "wrong"), 401, "unauthorized");
  checkError(post(base + "/abandon", R"({"keep": "source"})", "wrong"), 401, "unauthorized");
  checkError(post(base + "/abandon", "{}"), 400, "invalid-input");
  checkError(post(base + "/abandon", R"({"keep": "both"})"), 400, "invalid-input");
  checkError(post(base + "/abandon", R"({"keep": 1})"), 400, "invalid-input");
  checkError(post("/v1/migrations/m-nope/recover", "{}"), 404, "not-found");
  auto recovering = post(base + "/recover", "{}");
  REQUIRE(recovering);
  CHECK(recovering->status == 202);
  CHECK(json::parse(recovering->body)["id"] == id);
  // The target lacks pages: keeping it is a conflict that says so.
  auto refused = post(base + "/abandon", R"({"keep": "target"})");
  checkError(refused, 409, "conflict");
  CHECK_THAT(json::parse(refused->body)["error"].get<std::string>(), Contains("still waits for 2 page requests"));

  // Keep the source: the target's copy goes, the frozen source runs again.
  auto abandoned = post(base + "/abandon", R"({"keep": "source"})");
  REQUIRE(abandoned);
  INFO(abandoned->body);
  CHECK(abandoned->status == 200);
  CHECK(json::parse(abandoned->body)["stats"]["kept"] == "source");
  REQUIRE(waitUntil([&] { return cluster.journal->get(id).state == MigrationState::Abandoned; }, 10s));
  checkError(post(base + "/recover", "{}"), 409, "conflict");
  checkError(post(base + "/abandon", R"({"keep": "source"})"), 409, "conflict");
}
