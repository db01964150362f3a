// Issue 3 end to end: containers on lab hosts with real CNI (bridge,
// host-local, tuning), moved between hosts by export/import, keep their IP,
// MAC and open TCP connections; a failed restore leaves nothing behind.
#include <signal.h>

#include <catch2/catch.hpp>
#include <set>
#include <sstream>
#include <thread>

#include "common/files.h"
#include "common/subprocess.h"
#include "tests/support/harness.h"

using namespace migrate;
using namespace migrate::test;
using nlohmann::json;


namespace {

bool pingFromClient(const std::string& ip) {
  return LabGuard::exec("client", {"ping", "-c", "1", "-W", "1", ip}).status == 0;
}

// The MAC and addresses of eth0 inside the container's netns, as the kernel has them.
json linkOf(const std::string& netns) {
  auto out = run({"nsenter", "--net=" + netns, "ip", "-j", "addr", "show", "eth0"});
  return json::parse(out).at(0);
}

std::set<std::string> netnsList() {
  std::set<std::string> names;
  std::istringstream in(run({"ip", "netns", "list"}));
  std::string name;
  while (in >> name) {
    names.insert(name);
    std::string rest;
    std::getline(in, rest);
  }
  return names;
}

// The lab with two hosts, each with a local agent on its CNI network and the
// test image. Members die in reverse order: agents' containers go before the lab.
struct TwoLabHosts {
  LabGuard lab{2};
  AgentHome h1{"host1"}, h2{"host2"};
  TwoLabHosts() {
    for (auto* h : {&h1, &h2}) {
      placeInLabHost(*h, h->host());
      h->importTestImage();
    }
    h2.trustSigner(h1);
  }
};

}  // namespace

TEST_CASE("a container keeps its IP and MAC when exported on host1 and restored on host2") {
  REQUIRE_PRIVILEGES();
  TwoLabHosts lab;
  auto& h1 = lab.h1;
  auto& h2 = lab.h2;
  TempDir scratch("/var/tmp", "migrate-bundle");
  auto bundle = (scratch.path() / "web.tar.zst").string();

  auto c = h1.agentJson({"run", "--name", "web", "test", "/usr/local/bin/echo-server", "7777"});
  std::string ip = c["state"]["ip"], mac = c["state"]["mac"];
  REQUIRE(ip.rfind("198.18.0.", 0) == 0);
  REQUIRE(waitUntil([&] { return pingFromClient(ip); }, std::chrono::seconds(5)));
  auto before = linkOf(c["state"]["netns"]);
  CHECK(before["address"] == mac);

  h1.agent({"checkpoint", "web", "--export", bundle});
  CHECK_FALSE(pingFromClient(ip));
  h1.agent({"rm", "web"});

  auto r = h2.agentJson({"restore", "--import", bundle});
  CHECK(r["state"]["ip"] == ip);
  CHECK(r["state"]["mac"] == mac);
  auto after = linkOf(r["state"]["netns"]);
  CHECK(after["address"] == mac);
  bool hasIp = false;
  for (auto& a : after["addr_info"]) hasIp |= a["local"] == ip;
  CHECK(hasIp);
  CHECK(waitUntil([&] { return pingFromClient(ip); }, std::chrono::seconds(5)));
}

TEST_CASE("an open TCP connection survives checkpoint on host1 and restore on host2") {
  REQUIRE_PRIVILEGES();
  TwoLabHosts lab;
  auto& h1 = lab.h1;
  auto& h2 = lab.h2;
  TempDir scratch("/var/tmp", "migrate-bundle");
  auto bundle = (scratch.path() / "echo.tar.zst").string();

  auto c = h1.agentJson({"run", "--name", "echo", "test", "/usr/local/bin/echo-server", "7777"});
  std::string ip = c["state"]["ip"];
  // One connection from the client namespace, streaming numbered messages and
  // checking every echo, until we stop it.
  TcpClient tcp(ip, 7777);
  REQUIRE(waitUntil([&] { return h1.agent({"logs", "echo"}).find("client connected") != std::string::npos; },
                    std::chrono::seconds(10)));

  h1.agent({"checkpoint", "--tcp-established", "echo", "--export", bundle});
  h1.agent({"rm", "echo"});
  auto verifiedBefore = tcp.verified();
  auto r = h2.agentJson({"restore", "--import", bundle});
  CHECK(r["state"]["ip"] == ip);
  // The connection carries echoes again, once past TCP's retransmission backoff.
  CHECK(waitUntil([&] { return tcp.verified() > verifiedBefore + 20; }, std::chrono::seconds(30)));
  auto summary = tcp.stop();
  INFO(summary.dump());
  CHECK(summary["exitStatus"] == 0);
  CHECK(summary["error"].is_null());
  CHECK(summary["verified"] == summary["sent"]);
  CHECK(summary["verified"].get<int>() > 20);
  // The server saw no second connection: the same one went on.
  auto connects = occurrences(h2.agent({"logs", "echo"}), "client connected");
  CHECK(connects == 1);
}

TEST_CASE("a restore that fails on the target reports why and leaves no netns, lock or mount") {
  REQUIRE_PRIVILEGES();
  TwoLabHosts lab;
  auto& h1 = lab.h1;
  auto& h2 = lab.h2;
  TempDir scratch("/var/tmp", "migrate-bundle");
  auto bundle = (scratch.path() / "web.tar.zst").string();

  // The original keeps running on host1 and so keeps its address: restoring
  // the copy with the same IP on host2 must fail in CNI (IP taken).
  auto c = h1.agentJson({"run", "--name", "web", "test", "/usr/local/bin/counter"});
  std::string ip = c["state"]["ip"];
  h1.agent({"checkpoint", "--leave-running", "web", "--export", bundle});
  h2.agent({"import", bundle});
  auto res = h2.tryAgent({"--output", "json", "restore", "web"});
  CHECK(res.status != 0);
  INFO(res.err);
  // CNI refuses the address as a Conflict inside the prestart hook, but runc
  // reports only that its hook failed, so the restore's kind is `failed`.
  // TODO(errors): carry the hook's kind past runc (not by its text) and
  // expect `conflict` here.
  CHECK(errorKindOf(res) == "failed");
  CHECK(res.err.find("cni") != std::string::npos);
  CHECK(res.err.find(ip) != std::string::npos);

  // Nothing of the failed attempt is left on host2: no netns (and so no lock
  // table), no overlay mount, no veth on its bridge; the container is still
  // checkpointed and can be retried once the address is free.
  CHECK(std::distance(fs::directory_iterator(h2.dir() / "netns"), fs::directory_iterator()) == 0);
  // (Its CRIU images stay on their tmpfs, ready for a retry: not an overlay.)
  std::istringstream mounts(readFile("/proc/self/mountinfo"));
  for (std::string line; std::getline(mounts, line);) {
    if (line.find(h2.dir().string()) != std::string::npos) CHECK(line.find("/checkpoint ") != std::string::npos);
  }
  auto links = LabGuard::exec("host2", {"ip", "-o", "link", "show", "master", "cni0"}).out;
  CHECK(links.find("veth") == std::string::npos);
  CHECK(h2.agentJson({"inspect", "web"})["state"]["status"] == "checkpointed");
  // The original was not disturbed.
  CHECK(pingFromClient(ip));
  CHECK(h1.agentJson({"inspect", "web"})["state"]["status"] == "running");

  // Once host1 lets go of it, the same restore succeeds with the same address.
  h1.agent({"rm", "--force", "web"});
  auto r = h2.agentJson({"restore", "web"});
  CHECK(r["state"]["ip"] == ip);
  CHECK(waitUntil([&] { return pingFromClient(ip); }, std::chrono::seconds(5)));
}

TEST_CASE("lab up then down leaves no namespaces behind") {
  REQUIRE_PRIVILEGES();
  auto before = netnsList();
  {
    LabGuard lab(2);
    auto during = netnsList();
    CHECK(during.count("host1"));
    CHECK(during.count("host2"));
    CHECK(during.count("fabric"));
    CHECK(during.count("client"));
  }
  CHECK(netnsList() == before);
  CHECK_FALSE(fs::exists("/run/migrate-lab"));
}
