#include "agent/oci-layout.h"

#include <catch2/catch.hpp>

#include "common/error.h"

using namespace migrate;

namespace {

ErrorKind kindOf(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.kind();
  }
  FAIL("no error");
  return ErrorKind::Failed;
}

}  // namespace

TEST_CASE("image JSON is an object, with its nesting bounded") {
  CHECK(parseImageJson(R"({"a": 1})", "manifest")["a"] == 1);
  CHECK(kindOf([] { parseImageJson("[1]", "manifest"); }) == ErrorKind::InvalidInput);
  CHECK(kindOf([] { parseImageJson("not json", "manifest"); }) == ErrorKind::InvalidInput);
  CHECK(kindOf([] { parseImageJson(std::string(100000, '['), "manifest"); }) == ErrorKind::InvalidInput);
}

TEST_CASE("digests from an image are sha256 and well formed, or refused by kind") {
  std::string good = "sha256:" + std::string(64, 'a');
  CHECK(checkedDigest(good, "layer") == good);
  CHECK(digestHex(good) == std::string(64, 'a'));
  CHECK(kindOf([] { checkedDigest("sha512:abc", "layer"); }) == ErrorKind::Unimplemented);
  CHECK(kindOf([] { checkedDigest("sha256:../../etc", "layer"); }) == ErrorKind::InvalidInput);
  CHECK(kindOf([] { checkedDigest(nlohmann::json(), "layer"); }) == ErrorKind::InvalidInput);
}

TEST_CASE("a descriptor needs a digest and a size") {
  std::string digest = "sha256:" + std::string(64, 'b');
  auto d = parseDescriptor({{"mediaType", "application/vnd.oci.image.layer.v1.tar"}, {"digest", digest}, {"size", 5}}, "layer");
  CHECK(d.size == 5);
  CHECK(isLayerMediaType(d.mediaType));
  CHECK_FALSE(isLayerMediaType("application/octet-stream"));
  CHECK(kindOf([&] { parseDescriptor({{"digest", digest}, {"size", -1}}, "layer"); }) == ErrorKind::InvalidInput);
}

TEST_CASE("tagOf finds the tag, not a registry port") {
  CHECK(tagOf("busybox:1.36") == "1.36");
  CHECK(tagOf("busybox") == "");
  CHECK(tagOf("registry:5000/busybox") == "");
  CHECK(tagOf("registry:5000/busybox:latest") == "latest");
}

TEST_CASE("an image config gives its runtime defaults") {
  auto config = parseImageConfig({{"config", {{"Entrypoint", {"/bin/sh"}}, {"Env", {"A=1"}}, {"WorkingDir", "/w"}}}});
  CHECK(config.entrypoint == std::vector<std::string>{"/bin/sh"});
  CHECK(config.env == std::vector<std::string>{"A=1"});
  CHECK(config.workingDir == "/w");
  CHECK(parseImageConfig(nlohmann::json::object()) == ImageConfig{});
}
