#include "agent/page-server-protocol.h"

#include <catch2/catch.hpp>
#include <cstring>
#include <map>

#include "common/error.h"

using namespace migrate;

namespace {

std::string request(uint32_t cmd, uint64_t pages, uint64_t vaddr = 0x7f0000000000, uint64_t id = 1) {
  std::string raw(kPageRequestBytes, '\0');
  std::memcpy(raw.data(), &cmd, 4);
  std::memcpy(raw.data() + 8, &pages, 8);
  std::memcpy(raw.data() + 16, &vaddr, 8);
  std::memcpy(raw.data() + 24, &id, 8);
  return raw;
}

std::string answer(uint64_t pages, char fill) {
  return request(6 | (1u << 16), pages) + std::string(pages * kPageBytes, fill);
}

}  // namespace

TEST_CASE("page requests are cut out of a byte stream however it arrives") {
  PageRequestSplitter splitter;
  std::string stream = request(7, 3) + request(0x1023, 0);
  CHECK(splitter.feed(stream.data(), 10).empty());
  auto got = splitter.feed(stream.data() + 10, stream.size() - 10);
  REQUIRE(got.size() == 2);
  CHECK(got[0].command() == PageCommand::Get);
  CHECK(got[0].pages() == 3);
  CHECK(got[1].command() == PageCommand::Close);
}

TEST_CASE("a page request lazy-pages never sends is refused") {
  PageRequestSplitter splitter;
  std::string bad = request(1, 1);  // PS_IOV_ADD: a dump's, not lazy-pages'
  CHECK_THROWS_AS(splitter.feed(bad.data(), bad.size()), Error);
  PageRequestSplitter huge;
  std::string big = request(7, kMaxPagesPerRequest + 1);
  CHECK_THROWS_AS(huge.feed(big.data(), big.size()), Error);
}

TEST_CASE("answers are matched to requests in order, a clamped answer included") {
  PageAnswerTracker tracker;
  PageRequestSplitter splitter;
  std::string asked = request(7, 4) + request(7, 1) + request(0x1023, 0);
  for (auto& r : splitter.feed(asked.data(), asked.size())) tracker.expect(r);
  // The first is clamped to 2 pages (the end of its mapping).
  std::string stream = answer(2, 'a') + answer(1, 'b') + std::string(4, '\0');
  std::map<uint64_t, size_t> bytesPerRequest;
  for (size_t at = 0; at < stream.size(); at += 1000) {
    size_t n = std::min<size_t>(1000, stream.size() - at);
    tracker.feed(stream.data() + at, n, [&](const PageAnswerTracker::Pending& p, const char*, size_t size) {
      bytesPerRequest[p.request.pages()] += size;
    });
  }
  CHECK(tracker.empty());
  CHECK(bytesPerRequest[4] == kPageRequestBytes + 2 * kPageBytes);
  CHECK(bytesPerRequest[1] == kPageRequestBytes + kPageBytes);
  CHECK(bytesPerRequest[0] == 4);
}

TEST_CASE("an answer with more pages than asked, or nothing asked, is out of protocol") {
  PageAnswerTracker tracker;
  std::string one = request(7, 1);
  tracker.expect(PageRequest{one});
  std::string tooMany = answer(2, 'x');
  CHECK_THROWS_AS(tracker.feed(tooMany.data(), tooMany.size(), [](auto&, auto, auto) {}), Error);
  PageAnswerTracker idle;
  CHECK_THROWS_AS(idle.feed("x", 1, [](auto&, auto, auto) {}), Error);
}

TEST_CASE("a request's channel rides in its padding and is cleared for CRIU") {
  PageRequest r{request(7, 3)};
  CHECK(r.channel() == PageChannel::Urgent);
  PageRequest bulk = r.onChannel(PageChannel::Bulk);
  CHECK(bulk.channel() == PageChannel::Bulk);
  CHECK((bulk.pages() == 3 && bulk.vaddr() == r.vaddr() && bulk.dstId() == r.dstId()));
  CHECK(bulk.onChannel(PageChannel::Urgent).raw == r.raw);  // CRIU's bytes again
}

TEST_CASE("the source relay's frames are cut apart however they arrive, and a bad frame header is refused") {
  std::string stream = pageFrameHeader(PageChannel::Bulk, 6) + "bbbbbb" + pageFrameHeader(PageChannel::Urgent, 3) +
                       "uuu" + pageFrameHeader(PageChannel::Bulk, 2) + "BB";
  for (size_t step : {size_t(1), size_t(2), size_t(5), size_t(7), stream.size()}) {
    PageFrameSplitter frames;
    std::map<PageChannel, std::string> got;
    for (size_t at = 0; at < stream.size(); at += step) {
      frames.feed(stream.data() + at, std::min(step, stream.size() - at),
                  [&](PageChannel c, const char* data, size_t n) { got[c].append(data, n); });
    }
    CHECK(got[PageChannel::Bulk] == "bbbbbbBB");
    CHECK(got[PageChannel::Urgent] == "uuu");
  }
  auto refused = [](std::string header) {
    PageFrameSplitter frames;
    try {
      frames.feed(header.data(), header.size(), [](PageChannel, const char*, size_t) {});
    } catch (const Error& e) {
      return e.kind() == ErrorKind::InvalidInput;
    }
    return false;
  };
  std::string badChannel = pageFrameHeader(PageChannel::Bulk, 1);
  badChannel[0] = 2;
  CHECK(refused(badChannel));
  CHECK(refused(pageFrameHeader(PageChannel::Urgent, 0)));
  CHECK(refused(pageFrameHeader(PageChannel::Urgent, kMaxPageFrameBytes + 1)));
}

TEST_CASE("the target relay's give-up notice is a request of its own, never one of CRIU's") {
  PageRequestSplitter splitter;
  auto notice = relayGaveUpNotice();
  auto got = splitter.feed(notice.raw.data(), notice.raw.size());
  REQUIRE(got.size() == 1);
  CHECK(got[0].command() == PageCommand::GaveUp);
  CHECK(PageRequest{request(7, 1)}.command() == PageCommand::Get);
}
