#include "agent/page-answerer.h"

#include <algorithm>
#include <catch2/catch.hpp>
#include <cstring>
#include <deque>
#include <map>
#include <vector>

#include "common/error.h"

using namespace migrate;

namespace {

constexpr uint64_t kBase = 0x7f0000000000;

PageRequest get(uint64_t pages, uint64_t vaddr, uint64_t id = 1) {
  return PageRequest{pageAnswerHeader(std::string("\x07\0\0\0", 4), pages, vaddr, id)};
}

PageRequest closeRequest() { return PageRequest{pageAnswerHeader(std::string("\x23\x10\0\0", 4), 0, 0, 0)}; }

// A page's bytes as the frozen source has them: its address, repeated.
std::string page(uint64_t vaddr) {
  std::string p(kPageBytes, '\0');
  for (size_t at = 0; at < kPageBytes; at += 8) std::memcpy(p.data() + at, &vaddr, 8);
  return p;
}

// The source's answers to requests, each on the channel it was asked on.
struct Answers {
  std::vector<std::pair<PageChannel, std::string>> parts;
};

// CRIU's page server: answers each request in order, clamped to a mapping
// that ends at `end`.
Answers serve(const std::string& requests, uint64_t end) {
  Answers out;
  for (size_t at = 0; at + kPageRequestBytes <= requests.size(); at += kPageRequestBytes) {
    PageRequest r{requests.substr(at, kPageRequestBytes)};
    if (r.command() == PageCommand::Close) {
      out.parts.push_back({r.channel(), std::string(4, '\0')});
      continue;
    }
    uint64_t n = std::min(r.pages(), (end - r.vaddr()) / kPageBytes);
    std::string answer = pageAnswerHeader(std::string("\x06\0\x02\0", 4), n, r.vaddr(), r.dstId());
    for (uint64_t i = 0; i < n; ++i) answer += page(r.vaddr() + i * kPageBytes);
    out.parts.push_back({r.channel(), answer});
  }
  return out;
}

// The answers arriving, the first `limit` bytes of them.
void deliver(PageAnswerer& a, const Answers& answers, size_t limit = SIZE_MAX) {
  for (auto& [channel, bytes] : answers.parts) {
    size_t n = std::min(limit, bytes.size());
    a.fromSource(channel, bytes.data(), n);
    limit -= n;
    if (limit == 0) return;
  }
}

struct Answer {
  uint64_t pages, vaddr;
  bool intact;
};

// lazy-pages' side: the answers it reads, in order, each page checked.
std::vector<Answer> parse(const std::string& stream) {
  std::vector<Answer> out;
  for (size_t at = 0; at < stream.size();) {
    PageRequest h{stream.substr(at, kPageRequestBytes)};
    at += kPageRequestBytes;
    bool intact = true;
    for (uint64_t i = 0; i < h.pages(); ++i, at += kPageBytes) {
      intact = intact && stream.compare(at, kPageBytes, page(h.vaddr() + i * kPageBytes)) == 0;
    }
    out.push_back({h.pages(), h.vaddr(), intact});
  }
  return out;
}

}  // namespace

TEST_CASE("a background request is read ahead; the next is answered from what was kept, in order behind a fault") {
  PageAnswerer a;
  uint64_t end = kBase + 1024 * kPageBytes;
  a.fromLazyPages(get(16, kBase));  // 64 KiB of background
  auto sent = a.takeForSource();
  REQUIRE(sent.size() == kPageRequestBytes);
  CHECK(PageRequest{sent}.pages() == kReadAheadPages);  // asked for 1 MiB
  deliver(a, serve(sent, end));
  auto first = parse(a.takeForLazyPages());
  REQUIRE(first.size() == 1);
  CHECK(first[0].pages == 16);
  CHECK(first[0].intact);

  // A fault elsewhere goes out as it is; the next background chunk, kept
  // here, must still wait for the fault's answer: lazy-pages reads in order.
  a.fromLazyPages(get(1, kBase + 900 * kPageBytes));
  auto fault = a.takeForSource();
  CHECK(PageRequest{fault}.pages() == 1);
  a.fromLazyPages(get(16, kBase + 16 * kPageBytes));
  CHECK(a.takeForSource().empty());
  CHECK(a.takeForLazyPages().empty());
  CHECK(a.outstanding() == 2);
  auto answer = serve(fault, end);
  deliver(a, answer);
  auto next = parse(a.takeForLazyPages());
  REQUIRE(next.size() == 2);
  CHECK(next[0].vaddr == kBase + 900 * kPageBytes);
  CHECK(next[1].vaddr == kBase + 16 * kPageBytes);
  CHECK(next[1].pages == 16);
  CHECK(next[1].intact);
  CHECK(a.pagesFromCache() == 16);
  CHECK(a.outstanding() == 0);
}

TEST_CASE("an answer cut mid-way is asked again on the next connection and lazy-pages sees each byte once") {
  PageAnswerer a;
  uint64_t end = kBase + 4096 * kPageBytes;
  a.fromLazyPages(get(32, kBase));
  a.fromLazyPages(get(1, kBase + 2000 * kPageBytes));
  auto sent = a.takeForSource();
  auto answers = serve(sent, end);
  size_t cut = kPageRequestBytes + 5000;  // inside the first answer's pages
  deliver(a, answers, cut);
  std::string seen = a.takeForLazyPages();

  a.reconnected();
  auto again = a.takeForSource();
  CHECK(again == sent);  // both asked again, the first still enlarged
  auto replay = serve(again, end);
  deliver(a, replay);
  seen += a.takeForLazyPages();
  auto got = parse(seen);
  REQUIRE(got.size() == 2);
  CHECK(got[0].pages == 32);
  CHECK(got[0].intact);
  CHECK(got[1].pages == 1);
  CHECK(got[1].intact);
}

TEST_CASE("a request past what is kept gets the kept part, and CLOSE is answered through") {
  PageAnswerer a;
  uint64_t end = kBase + 200 * kPageBytes;  // the mapping ends inside the read-ahead
  a.fromLazyPages(get(16, kBase));
  auto sent = a.takeForSource();
  auto answer = serve(sent, end);
  deliver(a, answer);
  a.takeForLazyPages();
  a.fromLazyPages(get(512, kBase + 16 * kPageBytes));  // more than is kept (184 pages)
  auto got = parse(a.takeForLazyPages());
  REQUIRE(got.size() == 1);
  CHECK(got[0].pages == 184);
  CHECK(got[0].intact);
  a.fromLazyPages(closeRequest());
  auto close = a.takeForSource();
  auto status = serve(close, end);
  deliver(a, status);
  CHECK(a.takeForLazyPages() == std::string(4, '\0'));
  CHECK(a.closeAnswered());
}

TEST_CASE("faults in order are read ahead, the next ones answered here; a fault out of order goes alone") {
  PageAnswerer a;
  uint64_t end = kBase + 4096 * kPageBytes;
  auto answerAll = [&] {
    auto sent = a.takeForSource();
    auto answers = serve(sent, end);
    deliver(a, answers);
    return sent;
  };
  a.fromLazyPages(get(1, kBase + 100 * kPageBytes));  // a first fault: alone
  CHECK(PageRequest{answerAll()}.pages() == 1);
  a.fromLazyPages(get(1, kBase + 101 * kPageBytes));  // the next page: read ahead
  CHECK(PageRequest{answerAll()}.pages() == kFaultReadAheadPages);
  for (uint64_t p = 102; p < 101 + kFaultReadAheadPages; ++p) a.fromLazyPages(get(1, kBase + p * kPageBytes));
  CHECK(a.takeForSource().empty());  // all answered from what was kept
  CHECK(a.pagesFromCache() == kFaultReadAheadPages - 1);
  auto got = parse(a.takeForLazyPages());
  REQUIRE(got.size() == 1 + kFaultReadAheadPages);
  for (auto& answer : got) CHECK((answer.pages == 1 && answer.intact));
  CHECK(got.back().vaddr == kBase + (100 + kFaultReadAheadPages) * kPageBytes);

  // The next in order after the kept ones is read ahead again; one out of
  // order, or another process's, goes alone.
  a.fromLazyPages(get(1, kBase + (101 + kFaultReadAheadPages) * kPageBytes));
  CHECK(PageRequest{answerAll()}.pages() == kFaultReadAheadPages);
  a.fromLazyPages(get(1, kBase + 3000 * kPageBytes));
  CHECK(PageRequest{answerAll()}.pages() == 1);
  a.fromLazyPages(get(1, kBase + 3001 * kPageBytes, 2));
  CHECK(PageRequest{answerAll()}.pages() == 1);
  CHECK(a.outstanding() == 0);
}

namespace {

// What was sent to the source, as requests.
std::vector<PageRequest> requestsIn(const std::string& sent) {
  std::vector<PageRequest> out;
  for (size_t at = 0; at + kPageRequestBytes <= sent.size(); at += kPageRequestBytes) {
    out.push_back(PageRequest{sent.substr(at, kPageRequestBytes)});
  }
  return out;
}

// CRIU's page server that holds `ranges` only, and fails the test (as the
// real one ends its dump) on a GET outside them; answers clamped at `clamp`
// pages past a range's start if given (an iovec of its pipes ending there).
Answers serveOnly(const std::string& requests, const std::vector<PageRange>& ranges, uint64_t clamp = 0) {
  Answers out;
  for (auto& r : requestsIn(requests)) {
    if (r.command() == PageCommand::Close) {
      out.parts.push_back({r.channel(), std::string(4, '\0')});
      continue;
    }
    auto it = std::find_if(ranges.begin(), ranges.end(),
                           [&](const PageRange& range) { return r.vaddr() >= range.vaddr && r.vaddr() < range.end(); });
    REQUIRE(it != ranges.end());
    uint64_t end = it->end();
    if (clamp != 0 && r.vaddr() < it->vaddr + clamp * kPageBytes) end = it->vaddr + clamp * kPageBytes;
    uint64_t n = std::min(r.pages(), (end - r.vaddr()) / kPageBytes);
    std::string answer = pageAnswerHeader(std::string("\x06\0\x02\0", 4), n, r.vaddr(), r.dstId());
    for (uint64_t i = 0; i < n; ++i) answer += page(r.vaddr() + i * kPageBytes);
    out.parts.push_back({r.channel(), answer});
  }
  return out;
}

}  // namespace

TEST_CASE("with the source's lazy pages known, all of them are asked for ahead in small chunks, never outside them") {
  PageAnswerer a;
  uint64_t id = 1;
  // Two lazy ranges with a hole between them.
  std::vector<PageRange> ranges = {{kBase, 1500}, {kBase + 4000 * kPageBytes, 10000}};
  REQUIRE(a.knowLazyPages({{id, ranges}}, 1 << 20));
  a.fromLazyPages(get(16, kBase, id));
  auto sent = requestsIn(a.takeForSource());
  // lazy-pages' own, as it is, then the chunks after it, kAheadInFlightPages in all.
  REQUIRE(sent.size() == 1 + kAheadInFlightPages / kAheadChunkPages);
  CHECK((sent[0].vaddr() == kBase && sent[0].pages() == 16));
  CHECK((sent[1].vaddr() == kBase + 16 * kPageBytes && sent[1].pages() == kAheadChunkPages));
  auto first = [&] {
    std::string all;
    for (auto& r : sent) all += r.raw;
    return serveOnly(all, ranges);
  }();
  deliver(a, first);
  auto got = parse(a.takeForLazyPages());
  REQUIRE(got.size() == 1);
  CHECK((got[0].pages == 16 && got[0].intact));

  // The source answers whatever comes: the rest goes ahead, chunk by chunk,
  // never more than kAheadInFlightPages at once, never into the hole.
  // (The source answers one request at a time.)
  std::deque<PageRequest> pending;
  uint64_t inFlightMost = 0;
  for (int round = 0; round < 100000; ++round) {
    for (auto& r : requestsIn(a.takeForSource())) {
      bool inside = std::any_of(ranges.begin(), ranges.end(), [&](const PageRange& range) {
        return r.vaddr() >= range.vaddr && r.vaddr() + r.pages() * kPageBytes <= range.end();
      });
      CHECK(inside);
      CHECK(r.pages() <= kAheadChunkPages);
      pending.push_back(r);
    }
    if (pending.empty()) break;
    uint64_t pages = 0;
    for (auto& r : pending) pages += r.pages();
    inFlightMost = std::max(inFlightMost, pages);
    auto answer = serveOnly(pending.front().raw, ranges);
    pending.pop_front();
    deliver(a, answer);
  }
  CHECK(inFlightMost == kAheadInFlightPages);
  CHECK(a.pagesAskedAhead() == 1500 + 10000 - 16);

  // Then lazy-pages' requests and faults anywhere are answered here.
  a.fromLazyPages(get(64, kBase + 16 * kPageBytes, id));
  a.fromLazyPages(get(1, kBase + 1499 * kPageBytes, id));
  a.fromLazyPages(get(512, kBase + 4000 * kPageBytes, id));
  CHECK(a.takeForSource().empty());
  got = parse(a.takeForLazyPages());
  REQUIRE(got.size() == 3);
  CHECK((got[0].pages == 64 && got[0].intact && got[0].vaddr == kBase + 16 * kPageBytes));
  CHECK((got[1].pages == 1 && got[1].intact && got[1].vaddr == kBase + 1499 * kPageBytes));
  CHECK((got[2].pages == 512 && got[2].intact && got[2].vaddr == kBase + 4000 * kPageBytes));
  CHECK(a.pagesFromCache() == 64 + 1 + 512);

  // CLOSE goes through, and its status back.
  a.fromLazyPages(closeRequest());
  auto close = a.takeForSource();
  REQUIRE(requestsIn(close).size() == 1);
  auto status = serveOnly(close, ranges);
  deliver(a, status);
  CHECK(a.takeForLazyPages() == std::string(4, '\0'));
  CHECK(a.closeAnswered());
  CHECK(a.outstanding() == 0);
}

TEST_CASE("lazy pages past what the host has free are not asked for ahead") {
  PageAnswerer a;
  CHECK_FALSE(a.knowLazyPages({{1, {{kBase, 5000}}}, {2, {{kBase, 5000}}}}, 9999));
  a.fromLazyPages(get(16, kBase, 1));
  auto sent = requestsIn(a.takeForSource());
  REQUIRE(sent.size() == 1);  // lazy-pages' own, enlarged as without knowledge
  CHECK(sent[0].pages() == kReadAheadPages);
  CHECK(a.pagesAskedAhead() == 0);
}

TEST_CASE("nothing is asked for ahead once lazy-pages sent CLOSE") {
  PageAnswerer a;
  std::vector<PageRange> ranges = {{kBase, 8192}};
  REQUIRE(a.knowLazyPages({{1, ranges}}, 1 << 20));
  a.fromLazyPages(get(16, kBase, 1));
  auto sent = a.takeForSource();
  a.fromLazyPages(closeRequest());
  auto close = a.takeForSource();
  REQUIRE(requestsIn(close).size() == 1);
  CHECK(requestsIn(close)[0].command() == PageCommand::Close);
  auto answers = serveOnly(sent + close, ranges);
  deliver(a, answers);
  CHECK(a.takeForSource().empty());
  CHECK(a.closeAnswered());
  CHECK(a.outstanding() == 0);
}

TEST_CASE("a request for pages already asked for waits for that answer instead of asking again") {
  PageAnswerer a;
  uint64_t end = kBase + 4096 * kPageBytes;
  a.fromLazyPages(get(16, kBase));
  auto sent = a.takeForSource();
  REQUIRE(requestsIn(sent).size() == 1);
  // The next background chunk and a fault, both inside what is on its way.
  a.fromLazyPages(get(32, kBase + 16 * kPageBytes));
  a.fromLazyPages(get(1, kBase + 700 * kPageBytes));
  CHECK(a.takeForSource().empty());
  CHECK(a.outstanding() == 3);
  auto answer = serve(sent, end);
  deliver(a, answer);
  auto got = parse(a.takeForLazyPages());
  REQUIRE(got.size() == 3);
  CHECK((got[0].vaddr == kBase && got[0].pages == 16 && got[0].intact));
  CHECK((got[1].vaddr == kBase + 16 * kPageBytes && got[1].pages == 32 && got[1].intact));
  CHECK((got[2].vaddr == kBase + 700 * kPageBytes && got[2].pages == 1 && got[2].intact));
  CHECK(a.outstanding() == 0);
}

TEST_CASE("asked ahead and answered short, the rest is asked again, and a request inside it waits for that") {
  PageAnswerer a;
  std::vector<PageRange> ranges = {{kBase, 8192}};
  REQUIRE(a.knowLazyPages({{7, ranges}}, 1 << 20));
  a.fromLazyPages(get(16, kBase, 7));
  auto sent = a.takeForSource();
  REQUIRE(requestsIn(sent).size() == 1 + kAheadInFlightPages / kAheadChunkPages);  // its own, and chunks ahead
  // A fault inside the first chunk ahead, beyond where its answer will end:
  // the source's pipes end an iovec 40 pages in.
  uint64_t faultAt = kBase + 44 * kPageBytes;
  a.fromLazyPages(get(1, faultAt, 7));
  CHECK(a.takeForSource().empty());
  auto answers = serveOnly(sent, ranges, 40);
  deliver(a, answers);
  auto again = requestsIn(a.takeForSource());
  REQUIRE(!again.empty());
  // The rest of the short chunk goes first; the fault waits for it.
  CHECK((again[0].vaddr() == kBase + 40 * kPageBytes && again[0].pages() == 16 + kAheadChunkPages - 40));
  for (auto& r : again) CHECK(r.vaddr() != faultAt);
  std::string all;
  for (auto& r : again) all += r.raw;
  auto more = serveOnly(all, ranges);
  deliver(a, more);
  auto got = parse(a.takeForLazyPages());
  REQUIRE(got.size() == 2);
  CHECK((got[0].pages == 16 && got[0].intact));
  CHECK((got[1].vaddr == faultAt && got[1].pages == 1 && got[1].intact));
}

TEST_CASE("after a cut, what was asked ahead is asked again whole and lazy-pages sees each byte once") {
  PageAnswerer a;
  std::vector<PageRange> ranges = {{kBase, 8192}};
  REQUIRE(a.knowLazyPages({{1, ranges}}, 1 << 20));
  a.fromLazyPages(get(16, kBase, 1));
  auto sent = a.takeForSource();
  auto answers = serveOnly(sent, ranges);
  deliver(a, answers, kPageRequestBytes + 3 * kPageBytes + 100);  // cut inside the first
  CHECK(a.takeForLazyPages().empty());
  a.reconnected();
  auto again = a.takeForSource();
  CHECK(again == sent);
  auto replay = serveOnly(again, ranges);
  deliver(a, replay);
  auto got = parse(a.takeForLazyPages());
  REQUIRE(got.size() == 1);
  CHECK((got[0].pages == 16 && got[0].intact));
}

TEST_CASE("asking ahead skips what lazy-pages' own requests and faults asked for: no page is asked twice") {
  PageAnswerer a;
  std::vector<PageRange> ranges = {{kBase, 2000}};
  REQUIRE(a.knowLazyPages({{1, ranges}}, 1 << 20));
  std::map<uint64_t, int> asked;  // page -> times
  std::deque<PageRequest> pending;
  auto take = [&] {
    for (auto& r : requestsIn(a.takeForSource())) {
      for (uint64_t i = 0; i < r.pages(); ++i) ++asked[r.vaddr() + i * kPageBytes];
      pending.push_back(r);
    }
  };
  // Faults first (two in order: read ahead), then lazy-pages' background.
  a.fromLazyPages(get(1, kBase + 1500 * kPageBytes, 1));
  a.fromLazyPages(get(1, kBase + 1501 * kPageBytes, 1));
  a.fromLazyPages(get(1, kBase + 300 * kPageBytes, 1));
  take();
  a.fromLazyPages(get(16, kBase, 1));
  take();
  while (!pending.empty()) {
    auto answer = serveOnly(pending.front().raw, ranges);
    pending.pop_front();
    deliver(a, answer);
    take();
  }
  CHECK(asked.size() == 2000);  // every page once
  for (auto& [vaddr, times] : asked) {
    INFO(vaddr);
    CHECK(times == 1);
  }
  auto got = parse(a.takeForLazyPages());
  REQUIRE(got.size() == 4);
  for (auto& answer : got) CHECK(answer.intact);
}

TEST_CASE("after CLOSE a new connection asks again for CLOSE alone, never for pages asked ahead") {
  PageAnswerer a;
  std::vector<PageRange> ranges = {{kBase, 8192}};
  REQUIRE(a.knowLazyPages({{1, ranges}}, 1 << 20));
  a.fromLazyPages(get(16, kBase, 1));
  auto sent = a.takeForSource();
  REQUIRE(requestsIn(sent).size() > 1);
  deliver(a, serveOnly(requestsIn(sent)[0].raw, ranges));  // lazy-pages' own only; the bulk is on its way
  parse(a.takeForLazyPages());
  a.fromLazyPages(closeRequest());
  auto close = requestsIn(a.takeForSource());
  REQUIRE(close.size() == 1);
  a.reconnected();
  auto again = requestsIn(a.takeForSource());
  REQUIRE(again.size() == 1);
  CHECK(again[0].command() == PageCommand::Close);
  deliver(a, serveOnly(again[0].raw, ranges));
  CHECK(a.closeAnswered());
  CHECK(a.takeForLazyPages() == std::string(4, '\0'));
}

TEST_CASE("an answer for another address is refused and asked for again whole on the next connection") {
  PageAnswerer a;
  a.fromLazyPages(get(1, kBase + 10 * kPageBytes));
  auto sent = a.takeForSource();
  std::string wrong = pageAnswerHeader(std::string("\x06\0\x02\0", 4), 1, kBase + 11 * kPageBytes, 1) +
                      page(kBase + 11 * kPageBytes);
  CHECK_THROWS_AS(a.fromSource(PageChannel::Urgent, wrong.data(), wrong.size()), Error);
  CHECK(a.takeForLazyPages().empty());
  a.reconnected();
  auto again = a.takeForSource();
  CHECK(again == sent);
  deliver(a, serve(again, kBase + 4096 * kPageBytes));
  auto got = parse(a.takeForLazyPages());
  REQUIRE(got.size() == 1);
  CHECK((got[0].vaddr == kBase + 10 * kPageBytes && got[0].intact));
}
