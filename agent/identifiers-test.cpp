#include "agent/identifiers.h"

#include <catch2/catch.hpp>

#include "agent/container.h"
#include "common/error.h"

using namespace migrate;

namespace {

ContainerConfig goodConfig() {
  ContainerConfig c;
  c.id = "0123456789abcdef0123456789abcdef";
  c.name = "web";
  c.imageDigest = "sha256:" + std::string(64, 'a');
  c.imageName = "test";
  c.args = {"/usr/local/bin/counter"};
  c.env = {"A=1"};
  c.workingDir = "/root";
  c.user = "1000:100";
  c.hostname = "web";
  return c;
}

}  // namespace

TEST_CASE("identifiers: each pattern, and refusals that name the field and the rule") {
  CHECK(isContainerId(newContainerId()));
  CHECK_FALSE(isContainerId("../../../../tmp/x"));
  CHECK_FALSE(isContainerId("0123456789ABCDEF0123456789ABCDEF"));
  CHECK(isContainerName("web-1_a.b"));
  for (auto bad : {"", ".hidden", "-x", "a/b", "a\nb", "..", std::string(65, 'a').c_str()}) {
    CHECK_FALSE(isContainerName(bad));
  }
  CHECK_THROWS_WITH(checkContainerId("../x", "config.dump: `id`"),
                    Catch::Contains("config.dump: `id` `../x`: must be 32 lowercase hex"));
  CHECK_THROWS_WITH(checkContainerName("a\nb", "manifest `containerName`"), Catch::Contains("`a\\x0ab`"));
  CHECK(quotedForMessage(std::string(100, 'x')).size() < 80);
}

TEST_CASE("identifiers: a config from a bundle is checked field by field") {
  CHECK_NOTHROW(checkUntrustedConfig(goodConfig()));
  auto refused = [](auto change, const std::string& message) {
    auto c = goodConfig();
    change(c);
    CHECK_THROWS_WITH(checkUntrustedConfig(c), Catch::Contains(message));
  };
  refused([](ContainerConfig& c) { c.id = "../../../../var/tmp/escape"; }, "`id`");
  refused([](ContainerConfig& c) { c.name = "evil\n/name"; }, "`name`");
  refused([](ContainerConfig& c) { c.imageDigest = "sha256:../x"; }, "`imageDigest`");
  refused([](ContainerConfig& c) { c.args.clear(); }, "`args` is empty");
  refused([](ContainerConfig& c) { c.args = {std::string("a\0b", 3)}; }, "`args[0]` contains a NUL");
  refused([](ContainerConfig& c) { c.args.assign(5000, "x"); }, "more than 4096");
  refused([](ContainerConfig& c) { c.env = {"=x"}; }, "`env[0]` is not KEY=VALUE");
  refused([](ContainerConfig& c) { c.workingDir = "relative"; }, "`workingDir`");
  refused([](ContainerConfig& c) { c.user = "root"; }, "`user`");
  refused([](ContainerConfig& c) { c.user = "4294967295"; }, "`user`");
  refused([](ContainerConfig& c) { c.hostname = "a b"; }, "`hostname`");
}
