#include "net/network-status.h"

#include <catch2/catch.hpp>

#include "common/error.h"

using namespace migrate;

namespace {

// What the bridge + tuning conflist of the lab prints for one container.
constexpr const char* kStatus = R"([
  {
    "cniVersion": "1.0.0",
    "interfaces": [
      {"name": "cni0", "mac": "62:5f:0c:b0:90:d7"},
      {"name": "vethb696c314", "mac": "62:5f:0c:b0:90:d8"},
      {"name": "eth0", "mac": "b6:6b:9a:06:93:ec", "sandbox": "/run/netns/ctr"}
    ],
    "ips": [
      {"interface": 0, "address": "198.18.0.99/24"},
      {"interface": 2, "address": "fd00::5/64", "gateway": "fd00::1"},
      {"interface": 2, "address": "198.18.0.25/24", "gateway": "198.18.0.1"}
    ],
    "routes": [{"dst": "0.0.0.0/0"}],
    "dns": {"nameservers": ["198.18.0.1"]}
  }
])";

ErrorKind kindOfParse(const std::string& text) {
  try {
    parseNetworkStatus(text);
  } catch (const Error& e) {
    return e.kind();
  }
  FAIL("parsed: " << text);
  return ErrorKind::Failed;
}

}  // namespace

TEST_CASE("network.status parses CNI 1.0 results") {
  auto results = parseNetworkStatus(kStatus);
  REQUIRE(results.size() == 1);
  auto& r = results[0];
  CHECK(r.cniVersion == "1.0.0");
  REQUIRE(r.interfaces.size() == 3);
  CHECK(r.interfaces[2].name == "eth0");
  CHECK(r.interfaces[2].sandbox == "/run/netns/ctr");
  CHECK(r.interfaces[0].sandbox.empty());
  REQUIRE(r.ips.size() == 3);
  CHECK(r.ips[2].address == "198.18.0.25/24");
  CHECK(r.ips[2].gateway == "198.18.0.1");
  CHECK(r.ips[2].interface == 2);
  CHECK(r.ips[0].gateway.empty());

  // The host-side address and the IPv6 one are skipped.
  CHECK(requestedIp(results) == "198.18.0.25");
  CHECK(requestedMac(results) == "b6:6b:9a:06:93:ec");
}

TEST_CASE("network.status round-trips, keeping fields it does not model") {
  auto results = parseNetworkStatus(kStatus);
  auto text = serializeNetworkStatus(results);
  auto again = parseNetworkStatus(text);
  CHECK(serializeNetworkStatus(again) == text);
  CHECK(nlohmann::json::parse(text) == nlohmann::json::parse(kStatus));

  // Edits to the model win over raw.
  again[0].ips[2].address = "198.18.0.30/24";
  again[0].interfaces[2].mac = "02:00:00:00:00:01";
  again[0].ips[1].interface.reset();
  auto edited = parseNetworkStatus(serializeNetworkStatus(again));
  CHECK(requestedIp(edited) == "198.18.0.30");
  CHECK(requestedMac(edited) == "02:00:00:00:00:01");
  CHECK_FALSE(edited[0].ips[1].interface);
  CHECK(edited[0].raw["routes"] == nlohmann::json::parse(kStatus)[0]["routes"]);

  // A result built from scratch, with no raw.
  CniResult built;
  built.cniVersion = "1.0.0";
  built.interfaces = {{"eth0", "02:00:00:00:00:02", "/run/netns/x"}};
  built.ips = {{"198.18.0.41/24", "198.18.0.1", 0}};
  auto fromScratch = parseNetworkStatus(serializeNetworkStatus({built}));
  CHECK(requestedIp(fromScratch) == "198.18.0.41");
  CHECK(requestedMac(fromScratch) == "02:00:00:00:00:02");
}

TEST_CASE("network.status reads libpod's older results") {
  // CNI 0.4.0 (what libpod wrote in 2019): per-IP "version", no sandbox info
  // in some plugins' results.
  auto results = parseNetworkStatus(R"([{"cniVersion": "0.4.0",
      "ips": [{"version": "6", "address": "fd00::2/64"}, {"version": "4", "address": "10.88.0.7/16", "gateway": "10.88.0.1"}],
      "dns": {}}])");
  CHECK(requestedIp(results) == "10.88.0.7");
  CHECK_FALSE(requestedMac(results));
  CHECK(nlohmann::json::parse(serializeNetworkStatus(results))[0]["ips"][1]["version"] == "4");

  CHECK(parseNetworkStatus("null").empty());
  CHECK(parseNetworkStatus("[]").empty());
  CHECK_FALSE(requestedIp({}));
  CHECK_FALSE(requestedMac({}));
}

TEST_CASE("network.status rejects bad input with a clear message") {
  CHECK(kindOfParse("") == ErrorKind::InvalidInput);
  CHECK(kindOfParse("[{") == ErrorKind::InvalidInput);
  CHECK(kindOfParse(R"({"ips": []})") == ErrorKind::InvalidInput);
  CHECK(kindOfParse(R"([42])") == ErrorKind::InvalidInput);
  CHECK(kindOfParse(R"([{"ips": {}}])") == ErrorKind::InvalidInput);
  CHECK(kindOfParse(R"([{"ips": [{"gateway": "1.2.3.4"}]}])") == ErrorKind::InvalidInput);
  CHECK(kindOfParse(R"([{"ips": [{"address": "1.2.3.4"}]}])") == ErrorKind::InvalidInput);
  CHECK(kindOfParse(R"([{"ips": [{"address": "1.2.3.4/33"}]}])") == ErrorKind::InvalidInput);
  CHECK(kindOfParse(R"([{"ips": [{"address": "1.2.3.4/24", "gateway": "x"}]}])") == ErrorKind::InvalidInput);
  CHECK(kindOfParse(R"([{"ips": [{"address": "1.2.3.4/24", "interface": 0}]}])") == ErrorKind::InvalidInput);
  CHECK(kindOfParse(R"([{"ips": [{"address": "1.2.3.4/24", "interface": "0"}]}])") == ErrorKind::InvalidInput);
  CHECK(kindOfParse(R"([{"interfaces": [{"mac": "02:00:00:00:00:01"}]}])") == ErrorKind::InvalidInput);
  CHECK(kindOfParse(R"([{"interfaces": [{"name": "eth0", "mac": "nope"}]}])") == ErrorKind::InvalidInput);
  CHECK(kindOfParse(R"([{"cniVersion": 1}])") == ErrorKind::InvalidInput);

  CHECK_THROWS_WITH(parseNetworkStatus(R"([{}, {"ips": [{"address": "198.18.0.300/24"}]}])"),
                    "network.status: entry 1: ips[0]: `address` `198.18.0.300/24` is not an address in CIDR notation");
  CHECK_THROWS_WITH(parseNetworkStatus(R"({"a": 1})"), "network.status: not a JSON array of CNI results");
}

TEST_CASE("isIpAddress") {
  CHECK(isIpAddress("198.18.0.1", false));
  CHECK(isIpAddress("198.18.0.1/24", true));
  CHECK(isIpAddress("fd00::1/128", true));
  CHECK_FALSE(isIpAddress("fd00::1/129", true));
  CHECK_FALSE(isIpAddress("198.18.0.1", true));
  CHECK_FALSE(isIpAddress("198.18.0.1/", true));
  CHECK_FALSE(isIpAddress("198.18.0.1/24", false));
  CHECK_FALSE(isIpAddress("198.18.0", false));
}
