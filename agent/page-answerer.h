// The target relay's side of CRIU's page-server protocol
// (page-server-protocol.h): what lazy-pages asks, what goes to the source,
// what comes back, in the order lazy-pages expects — with a read-ahead.
//
// lazy-pages fetches the memory it was not asked for in chunks of 64 KiB,
// one at a time, and starts again at 64 KiB after every page fault (CRIU's
// uffd.c, update_xfer_len): a program that keeps faulting keeps the
// background transfer at 64 KiB per round trip. So a background request
// (more than one page) goes to the source enlarged to kReadAhead; lazy-pages
// gets what it asked for, and the rest waits here for its next request,
// answered without a round trip. A single-page request (a fault) goes as it
// is, so that its answer is not held up behind a larger one — unless it
// follows the previous fault of the same process page by page: a program
// reading its memory in order (a scan, a copy, memhog's check) would take a
// round trip per 4 KiB, 31 s for 1 GiB here. Such a fault goes as
// kFaultReadAheadPages (the rest kept, as above), so the faults after it
// are answered here.
//
// Answers go to lazy-pages in the order of its requests, whether they come
// from the source or from here. After a cut, reconnected() puts every
// request whose answer has not fully arrived back in line for the source;
// the bytes of the first that were already processed are skipped (the
// source's pages are frozen: the same request gets the same bytes).
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <string>
#include <utility>

#include "agent/page-server-protocol.h"

namespace migrate {

// Pages asked for a background request (4 MiB in all: 9.4-11.1 s for
// randrw-1024's pages phase here against 12.3 s at 1 MiB; a fault behind
// one waits for it, ~20 ms on this lab's wire).
constexpr uint64_t kReadAheadPages = 1024;
// Pages asked for a fault that follows the previous one in order (256 KiB).
constexpr uint64_t kFaultReadAheadPages = 64;
// Pages kept for later at most (64 MiB); past it the oldest go.
constexpr size_t kMaxCachedPages = 16384;

class PageAnswerer {
 public:
  // A request from lazy-pages.
  void fromLazyPages(PageRequest request);
  // Bytes of the source's answers. Throws Error(InvalidInput) on bytes that
  // are not an answer to what was sent.
  void fromSource(const char* data, size_t size);
  // A new connection to the source: every unanswered request goes again.
  void reconnected();

  // What to write next (taken: the caller writes it all).
  std::string takeForLazyPages() { return std::exchange(toLazyPages_, {}); }
  std::string takeForSource() { return std::exchange(toSource_, {}); }

  size_t outstanding() const { return asks_.size(); }
  bool closeAnswered() const { return closeAnswered_; }
  uint64_t pagesFromCache() const { return pagesFromCache_; }

 private:
  struct Ask {
    PageRequest request;  // lazy-pages'
    bool remote = false;  // answered by the source (else localAnswer)
    std::string localAnswer;
    // A remote answer as it is taken apart: its header, how many of its
    // pages lazy-pages gets (the rest is kept), bytes processed so far.
    std::string header;
    uint64_t deliver = 0;
    uint64_t processed = 0;
    std::string surplus;
  };
  using PageKey = std::pair<uint64_t, uint64_t>;  // (dst_id, vaddr)

  void flush();
  void answerFromSource(Ask& ask, const char* data, size_t size);
  void keep(uint64_t dstId, uint64_t vaddr, const std::string& pages);
  // The answer to `request` from kept pages, if its first page is kept.
  bool answerFromCache(const PageRequest& request, std::string* answer);

  std::deque<Ask> asks_;      // lazy-pages' requests not yet answered, in order
  PageAnswerTracker remote_;  // what went to the source, in order
  uint64_t skip_ = 0;         // bytes of the first remote answer already processed
  std::map<PageKey, std::string> cache_;
  std::deque<PageKey> cacheOrder_;
  std::string toLazyPages_;
  std::string toSource_;
  std::string answerCommand_;  // the command word of the source's answers
  std::map<uint64_t, uint64_t> lastFault_;  // dst_id -> vaddr of its last single-page request
  bool closeAnswered_ = false;
  uint64_t pagesFromCache_ = 0;
};

}  // namespace migrate
