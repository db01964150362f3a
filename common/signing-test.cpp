#include "common/signing.h"

#include <sys/stat.h>

#include <catch2/catch.hpp>

#include "common/error.h"
#include "common/files.h"

using namespace migrate;

TEST_CASE("signing: sign and verify round trip; another key, message or signature is refused") {
  SigningKey key = SigningKey::generate();
  SigningKey other = SigningKey::generate();
  std::string signature = key.sign("statement");
  CHECK(key.publicKey().size() == kEd25519PublicKeyBytes);
  CHECK(signature.size() == kEd25519SignatureBytes);
  CHECK(verifySignature(key.publicKey(), "statement", signature));
  CHECK_FALSE(verifySignature(other.publicKey(), "statement", signature));
  CHECK_FALSE(verifySignature(key.publicKey(), "statemenT", signature));
  for (size_t i : {size_t(0), size_t(31), size_t(63)}) {
    std::string flipped = signature;
    flipped[i] ^= 0x01;
    CHECK_FALSE(verifySignature(key.publicKey(), "statement", flipped));
  }
  CHECK_FALSE(verifySignature(key.publicKey(), "statement", signature.substr(0, 63)));
  CHECK_FALSE(verifySignature(key.publicKey().substr(1), "statement", signature));
  CHECK_FALSE(verifySignature(std::string(32, '\0'), "statement", signature));
}

TEST_CASE("signing: a key is made once, 0600, and read back the same") {
  TempDir dir("/tmp", "signing-test");
  auto path = dir.path() / "state" / "signing.key";
  std::string first = SigningKey::loadOrCreate(path).publicKey();
  struct stat st;
  REQUIRE(::stat(path.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  CHECK(SigningKey::loadOrCreate(path).publicKey() == first);
  CHECK(readFile(path).find("BEGIN PRIVATE KEY") != std::string::npos);
  // No temporary file left beside it.
  size_t files = 0;
  for (auto& e : std::filesystem::directory_iterator(path.parent_path())) files += e.is_regular_file();
  CHECK(files == 1);

  ::chmod(path.c_str(), 0644);
  CHECK_THROWS_WITH(SigningKey::loadOrCreate(path), Catch::Contains("chmod 600"));
  writeFileAtomic(path, "not a key\n", 0600);
  CHECK_THROWS_WITH(SigningKey::loadOrCreate(path), Catch::Contains("not a PEM private key"));
}

TEST_CASE("signing: public key text round trip and refusals") {
  SigningKey key = SigningKey::generate();
  std::string text = publicKeyText(key.publicKey());
  CHECK(text.rfind("ed25519:", 0) == 0);
  CHECK(text.size() == 8 + 64);
  CHECK(parsePublicKeyText("  " + text + "\n") == key.publicKey());
  CHECK_THROWS_WITH(parsePublicKeyText(text.substr(0, 70)), Catch::Contains("64 hex digits"));
  CHECK_THROWS_WITH(parsePublicKeyText("rsa:" + text.substr(8)), Catch::Contains("64 hex digits"));
  std::string bad = text;
  bad[20] = 'g';
  CHECK_THROWS_AS(parsePublicKeyText(bad), Error);
}
