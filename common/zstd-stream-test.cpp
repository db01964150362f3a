#include "common/zstd-stream.h"

#include <catch2/catch.hpp>

#include <random>

#include "common/error.h"

namespace migrate {
namespace {

std::string randomBytes(size_t size, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(size, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

std::string compress(const std::string& data, int level, int threads, size_t chunk) {
  StringOutputStream sink;
  ZstdOutputStream z(sink, level, threads);
  for (size_t pos = 0; pos < data.size(); pos += chunk) {
    z.write(data.data() + pos, std::min(chunk, data.size() - pos));
  }
  z.finish();
  z.finish();  // idempotent
  return sink.data();
}

std::string decompress(std::string compressed, size_t chunk = 65536) {
  StringInputStream source(std::move(compressed));
  ZstdInputStream z(source);
  std::string out;
  std::string buffer(chunk, '\0');
  for (;;) {
    size_t n = z.read(buffer.data(), buffer.size());
    if (n == 0) break;
    out.append(buffer.data(), n);
  }
  return out;
}

TEST_CASE("zstd stream round trip, single and multi-threaded") {
  std::string data = randomBytes(3 << 20, 1) + std::string(5 << 20, 'a') + randomBytes(1000, 2);
  for (int threads : {0, 2}) {
    INFO("threads " << threads);
    std::string compressed = compress(data, 3, threads, 100000);
    CHECK(compressed.size() < data.size());
    CHECK(decompress(compressed) == data);
    CHECK(decompress(compressed, 7) == data);  // tiny reads drain the decoder's buffered output
  }
}

TEST_CASE("zstd with worker threads turns to level 1 for data that does not compress, and back for data that does") {
  constexpr size_t kWindow = ZstdOutputStream::kAdaptWindow;
  std::string text;
  // Several windows each: zstd's workers report what they consumed a job or
  // two behind what was written, and a window may straddle the change.
  while (text.size() < 5 * kWindow) text += "line " + std::to_string(text.size()) + " of a log that compresses\n";
  std::string noise = randomBytes(5 * kWindow, 7);
  StringOutputStream sink;
  ZstdOutputStream z(sink, 3, 2);
  auto feed = [&](const std::string& data) {
    for (size_t pos = 0; pos < data.size(); pos += 1 << 20) z.write(data.data() + pos, std::min<size_t>(1 << 20, data.size() - pos));
  };
  feed(text);
  CHECK(z.level() == 3);
  feed(noise);
  CHECK(z.level() == ZstdOutputStream::kIncompressibleLevel);
  feed(text);
  CHECK(z.level() == 3);
  CHECK(z.levelChanges() == 2);
  z.finish();
  CHECK(decompress(sink.data()) == text + noise + text);
  // The text still compressed: the whole is the noise and a little more.
  CHECK(sink.data().size() < noise.size() + text.size() / 4);

  // Single-threaded, the level stays (libzstd would apply it only to the next frame).
  StringOutputStream sink1;
  ZstdOutputStream z1(sink1, 3, 0);
  z1.write(noise.data(), noise.size());
  CHECK(z1.level() == 3);
  z1.finish();
  CHECK(decompress(sink1.data()) == noise);
}

TEST_CASE("zstd stream of nothing is one valid empty frame") {
  std::string compressed = compress("", 3, 0, 1);
  CHECK(!compressed.empty());
  CHECK(decompress(compressed).empty());
}

TEST_CASE("zstd concatenated frames decode as one stream") {
  CHECK(decompress(compress("hello ", 3, 0, 3) + compress("world", 1, 0, 3)) == "hello world");
}

TEST_CASE("zstd truncated or corrupt input is refused as invalid input") {
  std::string data = randomBytes(1 << 20, 3);
  std::string compressed = compress(data, 3, 0, 4096);
  SECTION("cut in half") {
    try {
      decompress(compressed.substr(0, compressed.size() / 2));
      FAIL("no error");
    } catch (const Error& e) {
      CHECK(e.kind() == ErrorKind::InvalidInput);
      CHECK_THAT(e.what(), Catch::Contains("zstd") && Catch::Contains("truncated"));
    }
  }
  SECTION("cut by one byte") {
    CHECK_THROWS_WITH(decompress(compressed.substr(0, compressed.size() - 1)), Catch::Contains("truncated"));
  }
  SECTION("empty") { CHECK_THROWS_WITH(decompress(""), Catch::Contains("truncated")); }
  SECTION("flipped byte") {
    compressed[compressed.size() / 2] ^= 0x55;
    try {
      decompress(compressed);
      FAIL("no error");
    } catch (const Error& e) {
      CHECK(e.kind() == ErrorKind::InvalidInput);
      CHECK_THAT(e.what(), Catch::StartsWith("zstd: "));
    }
  }
  SECTION("not zstd at all") { CHECK_THROWS_WITH(decompress(std::string(100, 'x')), Catch::Contains("zstd: corrupt")); }
  SECTION("trailing garbage") { CHECK_THROWS_AS(decompress(compressed + "garbage!"), Error); }
}

TEST_CASE("zstd output finishes its inner stream") {
  struct Recorder : OutputStream {
    int finishes = 0;
    void write(const void*, size_t) override {}
    void finish() override { ++finishes; }
  } recorder;
  ZstdOutputStream z(recorder);
  z.write("x", 1);
  z.finish();
  z.finish();
  CHECK(recorder.finishes == 1);
  CHECK_THROWS_WITH(z.write("x", 1), Catch::Contains("after finish"));
}

}  // namespace
}  // namespace migrate
