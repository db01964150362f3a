// Issue 9 item 4 end to end through the migrate-agent command line: a bundle
// exported on one agent is restored on another only if that agent trusts its
// signer (or is told --trust-unsigned), and a bundle with a flipped byte is
// refused even then, leaving nothing behind. Real runc, CRIU and overlays.
#include <catch2/catch.hpp>

#include <cstring>
#include <fstream>

#include "common/files.h"
#include "common/subprocess.h"
#include "tests/support/harness.h"

using namespace migrate;
using namespace migrate::test;
using nlohmann::json;

namespace {

// The bundle's tar (zstd -d), edited by `edit`, compressed again into `out`:
// what an attacker with the file can do without breaking the zstd frame.
void rewriteTar(const fs::path& bundle, const fs::path& out, const std::function<void(std::string&)>& edit) {
  fs::path tar = out.string() + ".tar";
  run({"zstd", "-q", "-d", "-f", bundle.string(), "-o", tar.string()});
  std::string bytes = readFile(tar);
  edit(bytes);
  writeFileAtomic(tar, bytes);
  run({"zstd", "-q", "-f", tar.string(), "-o", out.string()});
  fs::remove(tar);
}

// Offset of the ustar header whose name is `name`.
size_t headerOf(const std::string& tar, const std::string& name) {
  for (size_t at = 0; at + 512 <= tar.size(); at += 512) {
    if (std::strncmp(tar.data() + at, name.c_str(), 100) == 0) return at;
  }
  throw std::runtime_error("no tar entry " + name);
}

// What a refused import may not leave: a container, a staging dir, a mount
// (overlay or the CRIU images' tmpfs) under the agent's state.
std::string leftovers(AgentHome& home) {
  std::string found;
  for (auto& c : home.agentJson({"ps"})) found += "container " + c["name"].get<std::string>() + "; ";
  for (auto& e : fs::directory_iterator(home.dir() / "containers")) found += "dir " + e.path().string() + "; ";
  std::ifstream mounts("/proc/self/mountinfo");
  for (std::string line; std::getline(mounts, line);) {
    if (line.find(home.dir().string()) != std::string::npos) found += "mount " + line + "; ";
  }
  return found;
}

}  // namespace

TEST_CASE("bundle signatures: unknown signer refused until trusted, unsigned only with --trust-unsigned, a flipped byte never") {
  REQUIRE_PRIVILEGES();
  AgentHome a("sig-a"), b("sig-b");
  a.importTestImage();
  b.importTestImage();
  TempDir scratch("/var/tmp", "migrate-bundle");
  fs::path bundle = scratch.path() / "c.tar.zst";
  fs::path flipped = scratch.path() / "flipped.tar.zst";
  fs::path unsignedBundle = scratch.path() / "unsigned.tar.zst";
  fs::path trailing = scratch.path() / "trailing.tar.zst";
  fs::path aKey = scratch.path() / "a.pub";

  a.agent({"run", "--name", "c", "test", "/usr/local/bin/counter"});
  REQUIRE(waitUntil([&] { return lastCount(a, "c") >= 3; }, std::chrono::seconds(10)));
  a.agent({"checkpoint", "c", "--export", bundle.string()});
  auto stopped = lastCount(a, "c");
  std::string aKeyText = a.agent({"signing-key"});
  REQUIRE(aKeyText.rfind("ed25519:", 0) == 0);
  writeFileAtomic(aKey, aKeyText);
  CHECK(a.agent({"signing-key"}) == aKeyText);  // made once, kept
  CHECK(b.agent({"signing-key"}) != aKeyText);

  rewriteTar(bundle, flipped, [](std::string& tar) {
    size_t data = headerOf(tar, "checkpoint/pages-1.img") + 512;
    tar[data + 4096 + 17] ^= 0x01;  // one bit of the counter's memory
  });
  rewriteTar(bundle, trailing, [](std::string& tar) { tar.append(2 << 20, '\0'); });
  rewriteTar(bundle, unsignedBundle, [](std::string& tar) {
    // Cut at the signature entry; end-of-archive blocks instead.
    tar.resize(headerOf(tar, "signature.json"));
    tar.append(1024, '\0');
  });

  // B does not know A's key.
  auto unknown = b.tryAgent({"--output", "json", "restore", "--import", bundle.string()});
  INFO(unknown.err);
  CHECK(unknown.status != 0);
  CHECK(errorKindOf(unknown) == "invalid-input");
  CHECK(unknown.err.find("bundle signature: signed by unknown key " + aKeyText.substr(0, aKeyText.size() - 1)) !=
        std::string::npos);
  CHECK(unknown.err.find("pass --trust-unsigned to restore it anyway") != std::string::npos);
  CHECK(leftovers(b) == "");

  // A flipped byte in a CRIU image: refused although B says --trust-unsigned.
  auto altered = b.tryAgent({"--output", "json", "restore", "--import", flipped.string(), "--trust-unsigned"});
  INFO(altered.err);
  CHECK(altered.status != 0);
  CHECK(errorKindOf(altered) == "invalid-input");
  CHECK(altered.err.find("bundle signature: digest mismatch") != std::string::npos);
  CHECK(altered.err.find("flipped byte") != std::string::npos);
  CHECK(leftovers(b) == "");

  // A signed archive with a stream that goes on after it (2 MiB of zeros):
  // no reader takes an unbounded tail.
  auto tail = b.tryAgent({"--output", "json", "restore", "--import", trailing.string(), "--trusted-key", aKey.string()});
  INFO("tail: " << tail.err);
  CHECK(tail.status != 0);
  CHECK(errorKindOf(tail) == "invalid-input");
  CHECK(tail.err.find("unexpected data after the end of the tar stream") != std::string::npos);
  CHECK(leftovers(b) == "");

  // Unsigned: refused, unless --trust-unsigned.
  auto refusedUnsigned = b.tryAgent({"--output", "json", "restore", "--import", unsignedBundle.string()});
  INFO(refusedUnsigned.err);
  CHECK(refusedUnsigned.status != 0);
  CHECK(errorKindOf(refusedUnsigned) == "invalid-input");
  CHECK(refusedUnsigned.err.find("the bundle is unsigned") != std::string::npos);
  CHECK(refusedUnsigned.err.find("--trust-unsigned") != std::string::npos);
  CHECK(leftovers(b) == "");
  CHECK(b.agentJson({"restore", "--import", unsignedBundle.string(), "--trust-unsigned"})["state"]["status"] ==
        "running");
  b.agent({"rm", "--force", "c"});

  // Trusted for one command with --trusted-key.
  CHECK(b.agentJson({"restore", "--import", bundle.string(), "--trusted-key", aKey.string()})["state"]["status"] ==
        "running");
  b.agent({"rm", "--force", "c"});
  CHECK(leftovers(b) == "");

  // Trusted for good (trusted-signers/); the altered copy is still refused.
  b.trustSigner(a);
  auto stillAltered = b.tryAgent({"--output", "json", "restore", "--import", flipped.string()});
  CHECK(stillAltered.status != 0);
  CHECK(errorKindOf(stillAltered) == "invalid-input");
  CHECK(stillAltered.err.find("digest mismatch") != std::string::npos);
  CHECK(leftovers(b) == "");
  auto restored = b.agentJson({"restore", "--import", bundle.string()});
  CHECK(restored["state"]["status"] == "running");
  REQUIRE(waitUntil([&] { return lastCount(b, "c") > stopped + 2; }, std::chrono::seconds(10)));
  auto all = counts(b.agent({"logs", "c"}));
  CHECK(std::count(all.begin(), all.end(), 1ul) == 1);  // went on from the checkpoint, not from 1
}
