// The allow-list's optional signing key, and which key the registry hands
// targets: the enrolled one if any, else what the agent registered.
#include "coordinator/host-registry.h"

#include <capnp/message.h>
#include <catch2/catch.hpp>

#include "common/error.h"
#include "common/files.h"
#include "common/signing.h"
#include "net/curve-keys.h"

using namespace migrate;

namespace {

void registerWith(HostRegistry& registry, const std::string& host, const std::string& signingKey) {
  capnp::MallocMessageBuilder message;
  auto reg = message.initRoot<proto::Register>();
  reg.setHostName(host);
  reg.setSigningKey(kj::arrayPtr(reinterpret_cast<const kj::byte*>(signingKey.data()), signingKey.size()));
  registry.recordRegister(host, reg.asReader());
}

}  // namespace

TEST_CASE("host registry: the allow-list may pin a host's signing key; a register does not replace it") {
  TempDir dir("/tmp", "registry-test");
  auto curve1 = generateCurveKeyPair(), curve2 = generateCurveKeyPair();
  SigningKey enrolled = SigningKey::generate(), other = SigningKey::generate();
  auto list = dir.path() / "agents";
  writeFileAtomic(list, "# hosts\nhost1 " + curve1.publicKey + " " + publicKeyText(enrolled.publicKey()) + "\nhost2 " +
                            curve2.publicKey + "\n");
  auto hosts = loadAllowList(list);
  REQUIRE(hosts.size() == 2);
  CHECK(hosts[0].signingKey == enrolled.publicKey());
  CHECK(hosts[1].signingKey.empty());

  HostRegistry registry(hosts, std::chrono::milliseconds(1000));
  registerWith(registry, "host1", other.publicKey());
  registerWith(registry, "host2", other.publicKey());
  CHECK(registry.get("host1").signingKey == enrolled.publicKey());
  CHECK(registry.get("host1").signingKeyEnrolled);
  CHECK(registry.get("host1").toJson()["signingKey"] == publicKeyText(enrolled.publicKey()));
  CHECK(registry.get("host2").signingKey == other.publicKey());
  CHECK_FALSE(registry.get("host2").signingKeyEnrolled);

  writeFileAtomic(list, "host1 " + curve1.publicKey + " ed25519:abcd\n");
  CHECK_THROWS_WITH(loadAllowList(list), Catch::Contains("line 1 signing key of `host1`"));
  writeFileAtomic(list, "host1 " + curve1.publicKey + " " + publicKeyText(enrolled.publicKey()) + " more\n");
  CHECK_THROWS_WITH(loadAllowList(list), Catch::Contains("expected `hostName publicKeyZ85 [ed25519:signingKey]`"));
}
