#include "agent/page-answerer.h"

#include <catch2/catch.hpp>
#include <cstring>

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

// CRIU's page server: answers each request in order, clamped to a mapping
// that ends at `end`.
std::string serve(const std::string& requests, uint64_t end) {
  std::string out;
  for (size_t at = 0; at + kPageRequestBytes <= requests.size(); at += kPageRequestBytes) {
    PageRequest r{requests.substr(at, kPageRequestBytes)};
    if (r.command() == PageCommand::Close) {
      out += std::string(4, '\0');
      continue;
    }
    uint64_t n = std::min(r.pages(), (end - r.vaddr()) / kPageBytes);
    out += pageAnswerHeader(std::string("\x06\0\x02\0", 4), n, r.vaddr(), r.dstId());
    for (uint64_t i = 0; i < n; ++i) out += page(r.vaddr() + i * kPageBytes);
  }
  return out;
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
  a.fromSource(serve(sent, end).data(), serve(sent, end).size());
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
  a.fromSource(answer.data(), answer.size());
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
  a.fromSource(answers.data(), cut);
  std::string seen = a.takeForLazyPages();

  a.reconnected();
  auto again = a.takeForSource();
  CHECK(again == sent);  // both asked again, the first still enlarged
  auto replay = serve(again, end);
  a.fromSource(replay.data(), replay.size());
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
  a.fromSource(answer.data(), answer.size());
  a.takeForLazyPages();
  a.fromLazyPages(get(512, kBase + 16 * kPageBytes));  // more than is kept (184 pages)
  auto got = parse(a.takeForLazyPages());
  REQUIRE(got.size() == 1);
  CHECK(got[0].pages == 184);
  CHECK(got[0].intact);
  a.fromLazyPages(closeRequest());
  auto close = a.takeForSource();
  auto status = serve(close, end);
  a.fromSource(status.data(), status.size());
  CHECK(a.takeForLazyPages() == std::string(4, '\0'));
  CHECK(a.closeAnswered());
}

TEST_CASE("faults in order are read ahead, the next ones answered here; a fault out of order goes alone") {
  PageAnswerer a;
  uint64_t end = kBase + 4096 * kPageBytes;
  auto answerAll = [&] {
    auto sent = a.takeForSource();
    auto answers = serve(sent, end);
    a.fromSource(answers.data(), answers.size());
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
