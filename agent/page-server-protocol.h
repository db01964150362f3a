// CRIU's page-server protocol as its lazy-pages daemon speaks it
// (criu/page-xfer.c), just enough to carry it across a broken connection.
//
// The daemon sends fixed-size requests: PS_IOV_GET (pages of one process
// at an address) and, once it has every page, PS_IOV_CLOSE. The page server
// answers each in order: a GET with a header of the same shape (the page
// count possibly clamped to one mapping) followed by that many pages, a
// CLOSE with a 4-byte status. Its pages are a frozen copy (tee()d from the
// dump's pipes), so the same request always gets the same bytes back.
//
// That is what lets the page relays (page-relay.h) survive a cut: the
// target's relay keeps every request whose answer has not fully arrived,
// asks for them again on a new connection and skips the bytes it already
// passed on; the source's relay throws away what CRIU still answers to the
// old connection's requests.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace migrate {

// struct page_server_iov: u32 cmd, then (aligned) u64 nr_pages, vaddr, dst_id.
constexpr size_t kPageRequestBytes = 32;
constexpr uint64_t kPageBytes = 4096;
// A GET larger than this is not CRIU's (it asks for at most a few MiB).
constexpr uint64_t kMaxPagesPerRequest = 1 << 18;

// GaveUp is the relays' own (never CRIU's): the target's relay cannot go on
// (lazy-pages or the restored processes are gone) and says so before it
// cuts the channel, so that the source reports it at once.
enum class PageCommand { Get, Close, GaveUp, Other };

// Pages of one process: `pages` from `vaddr`.
struct PageRange {
  uint64_t vaddr = 0;
  uint64_t pages = 0;
  uint64_t end() const { return vaddr + pages * kPageBytes; }
};

// The source's lazy pages: pid (dst_id) -> its ranges, sorted, not
// overlapping (criu-pagemap.h).
using LazyPages = std::map<uint64_t, std::vector<PageRange>>;

// Between the two relays (not CRIU's): a request says which of two
// channels its answer comes back on, and the source's relay sends the
// answers as frames of either, the urgent ones first. A fault's answer then
// never waits behind pages asked for ahead (QEMU's postcopy-preempt, on one
// connection). The channel rides in the request's padding (the 4 bytes
// after cmd), cleared before CRIU sees it.
enum class PageChannel : uint8_t { Urgent = 0, Bulk = 1 };
constexpr size_t kPageChannels = 2;
// Where a channel's queue is in an array of kPageChannels.
constexpr size_t channelIndex(PageChannel channel) { return static_cast<size_t>(channel); }

// A frame: u8 channel, u32 length (little endian), `length` bytes of answers.
constexpr size_t kPageFrameHeaderBytes = 5;
constexpr size_t kMaxPageFrameBytes = 1 << 20;
std::string pageFrameHeader(PageChannel channel, size_t length);

// Cuts the source relay's frames apart as they arrive.
class PageFrameSplitter {
 public:
  // `sink(channel, data, size)` gets each run of a frame's bytes. Throws
  // Error(InvalidInput) on a frame header that is not one.
  void feed(const char* data, size_t size, const std::function<void(PageChannel, const char*, size_t)>& sink);

 private:
  std::string header_;
  PageChannel channel_ = PageChannel::Urgent;
  size_t left_ = 0;  // bytes of the current frame still to come
};

struct PageRequest {
  std::string raw;  // the request as sent, kPageRequestBytes
  PageCommand command() const;
  uint64_t pages() const;
  uint64_t vaddr() const;
  // lazy-pages' GET: the process's pid in the images (pagemap-<pid>.img),
  // as CRIU's page server looks it up (pstree_item_by_virt).
  uint64_t dstId() const;
  // The same request (or answer header) for another number of pages.
  PageRequest withPages(uint64_t pages) const;
  // The same request for other pages of the same process.
  PageRequest at(uint64_t vaddr, uint64_t pages) const;
  PageChannel channel() const;
  PageRequest onChannel(PageChannel channel) const;  // PageChannel::Urgent: as CRIU's
};

// The target relay's GaveUp notice.
PageRequest relayGaveUpNotice();

// An answer header: `command` (an answer's first 4 bytes) for `pages` pages at
// `vaddr` of `dstId`.
std::string pageAnswerHeader(const std::string& command, uint64_t pages, uint64_t vaddr, uint64_t dstId);

// Cuts a byte stream into whole requests.
class PageRequestSplitter {
 public:
  // Appends what arrived; returns the requests it completed.
  std::vector<PageRequest> feed(const char* data, size_t size);

 private:
  std::string partial_;
};

// The answers to requests sent in order: which bytes of the answer stream
// belong to which request, and when each is complete.
class PageAnswerTracker {
 public:
  struct Pending {
    PageRequest request;
    uint64_t tag = 0;        // the caller's (the source relay: its connection generation)
    uint64_t received = 0;   // answer bytes seen so far
    uint64_t total = 0;      // known once the header is in (0: not yet)
    std::string header;      // the answer's header so far
  };

  void expect(PageRequest request, uint64_t tag = 0);

  // Consumes answer bytes. `sink(pending, data, size)` gets each run of
  // bytes with the request it answers; a request is dropped once complete
  // (after its last run went to the sink). Throws Error(InvalidInput) on
  // an answer that is not one (bytes with nothing asked, a header whose
  // page count is not what was asked or exceeds it).
  void feed(const char* data, size_t size, const std::function<void(const Pending&, const char*, size_t)>& sink);

  const std::deque<Pending>& pending() const { return pending_; }
  std::deque<Pending>& pending() { return pending_; }
  bool empty() const { return pending_.empty(); }

 private:
  std::deque<Pending> pending_;
};

}  // namespace migrate
