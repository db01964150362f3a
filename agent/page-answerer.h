// The target relay's side of CRIU's page-server protocol
// (page-server-protocol.h): what lazy-pages asks, what goes to the source,
// what comes back, in the order lazy-pages expects — with the rest of the
// memory fetched ahead.
//
// lazy-pages fetches the memory it was not asked for in chunks of 64 KiB
// and up, one at a time, never while a request of its own is unanswered,
// and starts again at 64 KiB after every page fault (CRIU's uffd.c,
// update_xfer_len): a program that keeps faulting keeps it at 64 KiB per
// round trip, 1 GiB in ~11 s here. So:
// - with the checkpoint's lazy pages known (knowLazyPages: the PE_LAZY
//   entries of its pagemaps, the only addresses CRIU's page server can
//   answer), all of them are asked for ahead, from where lazy-pages'
//   background is, in chunks of kAheadChunkPages, kAheadInFlightPages in
//   flight, on the bulk channel: the source's relay sends those answers
//   behind every urgent one (PageChannel). Every page is asked for once
//   (lazy-page-set.h: whatever lazy-pages' own requests and faults asked
//   for is skipped), and what comes is kept here until lazy-pages asks: a
//   page is here or in the process, never both, so the cache is bounded by
//   the checkpoint's lazy pages. A chunk answered short (CRIU's answer ends
//   with an iovec of its pipes) has its rest asked again;
// - without that knowledge, a background request goes enlarged to
//   kReadAheadPages and the rest of the answer is kept for the next ones;
// - a single-page request (a fault) goes as it is, unless it follows the
//   previous fault of the same process page by page: a program reading its
//   memory in order (a scan, a copy, memhog's check) would take a round trip
//   per 4 KiB. Such a fault goes as kFaultReadAheadPages;
// - a request for pages already asked for waits for that answer instead of
//   asking again.
//
// Every answer of the source goes into what is kept, and lazy-pages'
// requests are answered from there, in the order it sent them. After a cut,
// reconnected() asks again for everything whose answer has not fully
// arrived (the source's pages are frozen: the same request gets the same
// bytes).
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "agent/lazy-page-set.h"
#include "agent/page-server-protocol.h"

namespace migrate {

// Pages asked for a background request when the source's pages are not
// known (4 MiB: 9.4-11.1 s for randrw-1024's pages phase here against
// 12.3 s at 1 MiB).
constexpr uint64_t kReadAheadPages = 1024;
// Asking ahead: in chunks of 256 KiB, 1 MiB in flight (at 256 KiB in
// flight the wire was the limit, ~150 MB/s; faults go ahead of it).
constexpr uint64_t kAheadChunkPages = 64;
constexpr uint64_t kAheadInFlightPages = 256;
// Pages asked for a fault that follows the previous one in order (256 KiB).
constexpr uint64_t kFaultReadAheadPages = 64;
// Pages kept for later at most (64 MiB), or the source's lazy pages if that
// is more (every page is here or in the process, never both); past it the
// oldest go.
constexpr size_t kMaxCachedPages = 16384;

class PageAnswerer {
 public:
  // The pages the source holds (criu-pagemap.h): what may be asked for
  // ahead of lazy-pages. Refused (false, nothing asked ahead) past
  // `mostPages`: what is asked ahead is kept here until taken. Without it
  // only lazy-pages' own requests are enlarged.
  bool knowLazyPages(const LazyPages& pages, uint64_t mostPages);

  // A request from lazy-pages.
  void fromLazyPages(PageRequest request);
  // Bytes of the source's answers on `channel`. Throws Error(InvalidInput)
  // on bytes that are not an answer to what was sent on it.
  void fromSource(PageChannel channel, const char* data, size_t size);
  // A new connection to the source: every unanswered request goes again
  // (none asked ahead once lazy-pages sent CLOSE: CRIU reads nothing after
  // it, and lazy-pages has every page then).
  void reconnected();

  // What to write next (taken: the caller writes it all, after every call
  // above — answers make requests too).
  std::string takeForLazyPages() { return std::exchange(toLazyPages_, {}); }
  std::string takeForSource() { return std::exchange(toSource_, {}); }

  // lazy-pages' requests not yet answered.
  size_t outstanding() const { return asks_.size(); }
  bool closeAnswered() const { return closeAnswered_; }
  // Pages lazy-pages got without a request of its own going to the source,
  // and pages asked for ahead of it.
  uint64_t pagesFromCache() const { return pagesFromCache_; }
  uint64_t pagesAskedAhead() const { return pagesAskedAhead_; }

 private:
  struct Ask {
    PageRequest request;     // lazy-pages'
    uint64_t enlarged = 0;   // pages to ask the source for, if it must
    bool sent = false;       // a request of its own went to the source
    bool ready = false;      // `answer` is complete
    std::string answer;
  };
  // A request to the source, in the order sent on its channel, and its
  // answer so far.
  struct Sent {
    PageRequest request;
    std::string answer;
  };
  // What went to the source on each channel (urgent: lazy-pages' own; bulk:
  // asked ahead), not yet fully answered, and the answers' framing.
  struct Channel {
    std::deque<Sent> sent;
    PageAnswerTracker tracker;
  };
  using PageKey = std::pair<uint64_t, uint64_t>;  // (dst_id, vaddr)

  void send(const PageRequest& request, PageChannel channel);
  // Throws Error(InvalidInput) on an answer that is not `sent`'s.
  void check(const Sent& sent);
  void answered(const Sent& sent);
  // lazy-pages' request of `command` the source has been asked for and has
  // not answered yet (end() if none).
  std::deque<Ask>::iterator waitingFor(PageCommand command);
  // Answers what can be answered, asks the source for the rest, in order.
  void resolve();
  void askAhead();
  bool inFlight(uint64_t dstId, uint64_t vaddr) const;
  void flush();
  void keep(uint64_t dstId, uint64_t vaddr, const char* pages, uint64_t count);
  // The answer to `request` from kept pages, if its first page is kept:
  // how many pages it has (0: none kept).
  uint64_t answerFromCache(const PageRequest& request, std::string* answer);

  std::deque<Ask> asks_;  // lazy-pages' requests not yet answered, in order
  Channel channels_[kPageChannels];  // by channelIndex
  std::map<PageKey, std::string> cache_;
  std::deque<PageKey> cacheOrder_;
  std::string toLazyPages_;
  std::string toSource_;
  std::string answerCommand_;               // the command word of the source's answers
  std::map<uint64_t, uint64_t> lastFault_;  // dst_id -> vaddr of its last single-page request

  LazyPageSet lazy_;
  // Where asking ahead goes on: the process of lazy-pages' last background
  // request that was not kept (its request, the template), and the address
  // from which pages not yet asked for are asked.
  std::optional<PageRequest> aheadTemplate_;
  uint64_t aheadFrom_ = 0;
  uint64_t aheadInFlight_ = 0;  // pages
  bool closeSent_ = false;

  bool closeAnswered_ = false;
  uint64_t pagesFromCache_ = 0;
  uint64_t pagesAskedAhead_ = 0;
};

}  // namespace migrate
