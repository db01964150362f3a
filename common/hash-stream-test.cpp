#include "common/hash-stream.h"

#include <catch2/catch.hpp>

#include "common/files.h"

namespace migrate {
namespace {

// FIPS 180-2 test vectors.
constexpr const char* kEmpty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
constexpr const char* kAbc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

TEST_CASE("sha256 of strings matches the standard vectors") {
  CHECK(sha256Hex("") == kEmpty);
  CHECK(sha256Hex("abc") == kAbc);
}

TEST_CASE("sha256 output stream hashes what passes through") {
  StringOutputStream sink;
  Sha256OutputStream hash(sink);
  CHECK(hash.hexDigest() == kEmpty);
  hash.write("a", 1);
  hash.write("bc", 2);
  hash.finish();
  CHECK(sink.data() == "abc");
  CHECK(hash.hexDigest() == kAbc);
  CHECK(hash.hexDigest() == kAbc);  // asking twice gives the same answer
}

TEST_CASE("sha256 input stream hashes what it reads") {
  std::string data(1 << 20, 'q');
  StringInputStream source(data);
  Sha256InputStream hash(source);
  char buffer[4097];
  while (hash.read(buffer, sizeof buffer) > 0) {
  }
  CHECK(hash.hexDigest() == sha256Hex(data));
}

TEST_CASE("sha256 of a file") {
  TempDir dir(fs::temp_directory_path(), "hash-test");
  writeFileAtomic(dir.path() / "f", "abc");
  CHECK(sha256FileHex(dir.path() / "f") == kAbc);
  CHECK_THROWS(sha256FileHex(dir.path() / "missing"));
}

}  // namespace
}  // namespace migrate
