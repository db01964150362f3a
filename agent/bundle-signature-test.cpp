// The bundle signature against real bundles from writeBundle: every entry's
// bytes are covered, trust decides only who may sign, and integrity holds
// whatever the trust.
#include "agent/bundle-signature.h"

#include <fcntl.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <random>

#include "agent/bundle-reader.h"
#include "agent/bundle-writer.h"
#include "common/error.h"
#include "common/files.h"
#include "common/zstd-stream.h"

namespace migrate {
namespace {

std::string randomBytes(size_t size, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(size, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

void put(const fs::path& path, std::string_view content) {
  fs::create_directories(path.parent_path());
  writeFileAtomic(path, content, 0644);
}

// A checkpointed container's files, as exportCheckpoint hands them over.
struct Source {
  TempDir root{fs::temp_directory_path(), "signature-src"};
  BundleSources sources;
  SigningKey key = SigningKey::generate();

  explicit Source(size_t pagesBytes = 64 << 10) {
    auto& r = root.path();
    sources.manifest.containerName = "web";
    sources.manifest.containerId = "0123456789abcdef0123456789abcdef";
    sources.manifest.imageDigest = "sha256:" + std::string(64, 'f');
    sources.manifest.imageName = "docker.io/library/busybox:latest";
    sources.manifest.sourceHost = "host1";
    put(r / "config.dump", R"({"name":"web"})");
    put(r / "spec.dump", R"({"ociVersion":"1.0.2"})");
    put(r / "checkpoint" / "inventory.img", "inventory");
    put(r / "checkpoint" / "core-1.img", "core");
    put(r / "checkpoint" / "pages-1.img", randomBytes(pagesBytes, 3));
    put(r / "upper" / "etc" / "hostname", "web\n");
    put(r / "ctr.log", "log line\n");
    sources.configDump = r / "config.dump";
    sources.specDump = r / "spec.dump";
    sources.checkpointDir = r / "checkpoint";
    sources.upperDir = r / "upper";
    sources.ctrLog = r / "ctr.log";
    sources.signer = &key;
  }

  std::string tar() {
    StringOutputStream out;
    writeBundle(sources, out);
    return out.data();
  }
};

BundleTrust trusting(const std::string& publicKey, bool acceptUnsigned = false) {
  BundleTrust trust;
  trust.keys.push_back({publicKey, "test"});
  trust.acceptUnsigned = acceptUnsigned;
  trust.refusalHint = "(pass --trust-unsigned to restore it anyway)";
  return trust;
}

// Unpacks `tar` and checks its signature; the error message, or "" if the
// bundle is accepted.
std::string importMessage(const std::string& tar, const BundleTrust& trust) {
  TempDir dir(fs::temp_directory_path(), "signature-dst");
  try {
    StringInputStream in(tar);
    ReadSignature signature;
    auto manifest = readBundle(in, dir.path(), {}, {}, &signature);
    checkBundleSignature(signature, manifest, trust);
    return "";
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::InvalidInput);
    return e.what();
  }
}

// Offset of the ustar header of `name` (a short path, so no pax header).
size_t headerOf(const std::string& tar, const std::string& name) {
  for (size_t at = 0; at + 512 <= tar.size(); at += 512) {
    if (std::strncmp(tar.data() + at, name.c_str(), 100) == 0) return at;
  }
  FAIL("no tar header for " << name);
  return 0;
}

// Offset of `needle` inside the data of entry `name`.
size_t dataOffset(const std::string& tar, const std::string& name, std::string_view needle) {
  size_t data = headerOf(tar, name) + 512;
  size_t at = tar.find(needle, data);
  REQUIRE(at != std::string::npos);
  REQUIRE(at < data + 512);
  return at;
}

TEST_CASE("bundle signature: a signed bundle round trips; the signature names container, host and digest", "[signature]") {
  Source src(6 << 20);  // more than the tap keeps back, so it hashes as it goes
  std::string tar = src.tar();
  CHECK(importMessage(tar, trusting(src.key.publicKey())) == "");

  // Through zstd, as export and import chain it.
  StringOutputStream compressed;
  {
    ZstdOutputStream zstd(compressed, 3, 2);
    writeBundle(src.sources, zstd);
    zstd.finish();
  }
  TempDir dir(fs::temp_directory_path(), "signature-dst");
  StringInputStream in(compressed.data());
  ZstdInputStream unzstd(in);
  ReadSignature signature;
  auto manifest = readBundle(unzstd, dir.path(), {}, {}, &signature);
  REQUIRE(signature.text);
  CHECK(checkBundleSignature(signature, manifest, trusting(src.key.publicKey())).find("signed by ed25519:") == 0);
  auto s = BundleSignature::fromJson(nlohmann::json::parse(*signature.text));
  CHECK(s.signer == src.key.publicKey());
  CHECK(s.containerName == "web");
  CHECK(s.containerId == "0123456789abcdef0123456789abcdef");
  CHECK(s.sourceHost == "host1");
  CHECK(s.formatVersion == kBundleFormatVersion);
  CHECK(s.tarSha256 == signature.tarSha256);
  // The signature entry is not unpacked.
  CHECK_FALSE(fs::exists(dir.path() / bundle::kSignature));
  CHECK(readFile(dir.path() / "checkpoint" / "pages-1.img").size() == 6u << 20);
}

TEST_CASE("bundle signature: a flipped byte in any entry is refused, trusted signer or not", "[signature]") {
  Source src;
  std::string tar = src.tar();
  struct Flip {
    const char* what;
    size_t at;
  };
  std::vector<Flip> flips = {
      {"manifest.json", dataOffset(tar, "manifest.json", "busybox")},
      {"config.dump", dataOffset(tar, "config.dump", "web")},
      {"config.dump's padding", headerOf(tar, "config.dump") + 512 + 100},
      {"checkpoint image", headerOf(tar, "checkpoint/pages-1.img") + 512 + 1000},
      {"rootfs-diff file", dataOffset(tar, "rootfs-diff/etc/hostname", "web")},
      {"ctr.log", dataOffset(tar, "ctr.log", "log")},
  };
  for (auto& flip : flips) {
    for (bool acceptUnsigned : {false, true}) {
      INFO(flip.what << (acceptUnsigned ? " with --trust-unsigned" : ""));
      std::string bad = tar;
      bad[flip.at] ^= 0x01;
      CHECK_THAT(importMessage(bad, trusting(src.key.publicKey(), acceptUnsigned)),
                 Catch::StartsWith("bundle signature: digest mismatch") && Catch::Contains("flipped byte"));
    }
  }
}

TEST_CASE("bundle signature: a changed, forged or cut signature entry is refused", "[signature]") {
  Source src;
  std::string tar = src.tar();
  size_t header = headerOf(tar, std::string(bundle::kSignature));
  auto trust = trusting(src.key.publicKey(), /*acceptUnsigned=*/true);

  SECTION("a signature byte flipped") {
    size_t at = tar.find("\"signature\": \"", header + 512);
    REQUIRE(at != std::string::npos);
    at += 20;
    tar[at] = tar[at] == '0' ? '1' : '0';
    CHECK_THAT(importMessage(tar, trust), Catch::Contains("does not verify"));
  }
  SECTION("a hex digit's case changed (one bit)") {
    size_t at = tar.find("\"signature\": \"", header + 512);
    REQUIRE(at != std::string::npos);
    at += 14;
    while (!std::isalpha(static_cast<unsigned char>(tar[at]))) ++at;
    tar[at] ^= 0x20;
    CHECK_THAT(importMessage(tar, trust), Catch::Contains("not as its writer makes it"));
  }
  SECTION("the container name changed in the signature entry only") {
    size_t at = tar.find("\"containerName\": \"web\"", header + 512);
    REQUIRE(at != std::string::npos);
    tar[at + 18] = 'v';
    CHECK_THAT(importMessage(tar, trust), Catch::Contains("does not verify"));
  }
  SECTION("the signer swapped for another key") {
    std::string mine = publicKeyText(src.key.publicKey());
    size_t at = tar.find(mine, header + 512);
    REQUIRE(at != std::string::npos);
    tar.replace(at, mine.size(), publicKeyText(SigningKey::generate().publicKey()));
    CHECK_THAT(importMessage(tar, trust), Catch::Contains("does not verify"));
  }
  SECTION("cut inside the signature entry") {
    CHECK_THAT(importMessage(tar.substr(0, header + 512 + 40), trust), Catch::Contains("truncated"));
  }
  SECTION("a second signature entry") {
    std::string entry = tar.substr(header, tar.size() - header);  // header, data, end-of-archive
    std::string twice = tar.substr(0, header) + tar.substr(header, 1024) + entry;
    CHECK_THAT(importMessage(twice, trust), Catch::Contains("signature.json must come only once"));
  }
}

TEST_CASE("bundle signature: trust decides whose valid signature counts; --trust-unsigned lets the rest in", "[signature]") {
  Source src;
  std::string signedTar = src.tar();
  src.sources.signer = nullptr;
  std::string unsignedTar = src.tar();
  CHECK(unsignedTar.find("signature.json") == std::string::npos);
  SigningKey other = SigningKey::generate();

  CHECK_THAT(importMessage(signedTar, trusting(other.publicKey())),
             Catch::StartsWith("bundle signature: signed by unknown key " + publicKeyText(src.key.publicKey())) &&
                 Catch::Contains("--trust-unsigned"));
  CHECK(importMessage(signedTar, trusting(other.publicKey(), true)) == "");
  CHECK_THAT(importMessage(unsignedTar, trusting(src.key.publicKey())),
             Catch::StartsWith("bundle signature: the bundle is unsigned") && Catch::Contains("--trust-unsigned"));
  CHECK(importMessage(unsignedTar, trusting(src.key.publicKey(), true)) == "");
  CHECK_THAT(importMessage(unsignedTar, BundleTrust{}), Catch::Contains("unsigned"));

  // Over the network: exactly the coordinator's key for the source.
  CHECK(importMessage(signedTar, BundleTrust::onlyKey(src.key.publicKey(), "host1")) == "");
  CHECK_THAT(importMessage(signedTar, BundleTrust::onlyKey(other.publicKey(), "host1")),
             Catch::Contains("signature") && Catch::Contains("the coordinator says `host1` signs with " +
                                                             publicKeyText(other.publicKey())));
}

TEST_CASE("bundle signature: local trust is the agent's own key, trusted-signers/*.pub and --trusted-key", "[signature]") {
  TempDir state(fs::temp_directory_path(), "signature-state");
  SigningKey own = SigningKey::generate(), peer = SigningKey::generate(), extra = SigningKey::generate();
  put(trustedSignersDir(state.path()) / "host2.pub", publicKeyText(peer.publicKey()) + "  host2\n");
  put(trustedSignersDir(state.path()) / "README", "not a key, not read");
  put(state.path() / "extra.pub", publicKeyText(extra.publicKey()) + "\n");
  auto trust = BundleTrust::local(state.path(), own.publicKey(), {state.path() / "extra.pub"}, false);
  REQUIRE(trust.keys.size() == 3);
  CHECK(trust.keys[0].publicKey == own.publicKey());
  CHECK(trust.keys[1].publicKey == peer.publicKey());
  CHECK(trust.keys[1].label.find("host2.pub") != std::string::npos);
  CHECK(trust.keys[2].publicKey == extra.publicKey());
  CHECK_FALSE(trust.acceptUnsigned);

  put(trustedSignersDir(state.path()) / "broken.pub", "ed25519:abc\n");
  CHECK_THROWS_WITH(BundleTrust::local(state.path(), own.publicKey(), {}, false), Catch::Contains("broken.pub"));
}

}  // namespace
}  // namespace migrate
