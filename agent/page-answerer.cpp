#include "agent/page-answerer.h"

#include <algorithm>

#include "common/error.h"

namespace migrate {

bool PageAnswerer::knowLazyPages(std::map<uint64_t, std::vector<PageRange>> pages, uint64_t mostPages) {
  uint64_t total = 0;
  for (auto& [id, ranges] : pages) {
    for (auto& range : ranges) total += range.pages;
  }
  if (total > mostPages) return false;
  lazy_ = std::move(pages);
  lazyPages_ = total;
  return true;
}

void PageAnswerer::fromLazyPages(PageRequest request) {
  Ask ask;
  ask.enlarged = request.pages();
  if (request.command() == PageCommand::Get) {
    if (request.pages() == 1) {
      auto last = lastFault_.find(request.dstId());
      if (last != lastFault_.end() && last->second + kPageBytes == request.vaddr()) {
        ask.enlarged = kFaultReadAheadPages;
      }
      lastFault_[request.dstId()] = request.vaddr();
    } else {
      // Where the source's pages are known, asking ahead brings the rest.
      if (!lazy_.count(request.dstId())) ask.enlarged = std::max(request.pages(), kReadAheadPages);
    }
  } else if (request.command() == PageCommand::Close) {
    closeSent_ = true;
  } else {
    fail(ErrorKind::InvalidInput, "a request lazy-pages does not send");
  }
  ask.request = std::move(request);
  asks_.push_back(std::move(ask));
  resolve();
}

void PageAnswerer::send(PageRequest request, bool ahead) {
  Channel& c = channels_[ahead ? 1 : 0];
  request = request.onChannel(ahead ? PageChannel::Bulk : PageChannel::Urgent);
  toSource_ += request.raw;
  c.tracker.expect(request);
  c.sent.push_back({std::move(request), ahead, {}});
}

void PageAnswerer::fromSource(PageChannel channel, const char* data, size_t size) {
  Channel& c = channels_[channel == PageChannel::Bulk ? 1 : 0];
  c.tracker.feed(data, size, [&](const PageAnswerTracker::Pending& p, const char* bytes, size_t n) {
    if (c.sent.empty()) fail(ErrorKind::InvalidInput, "page answer from the source with nothing asked");
    Sent& front = c.sent.front();
    front.answer.append(bytes, n);
    if (p.total != 0 && p.received == p.total) {
      Sent done = std::move(front);
      c.sent.pop_front();
      answered(std::move(done));
    }
  });
}

void PageAnswerer::answered(Sent sent) {
  const PageRequest& asked = sent.request;
  if (sent.ahead) aheadInFlight_ -= asked.pages();
  if (asked.command() != PageCommand::Get) {
    // CLOSE's status goes through to the request it answers.
    auto it = std::find_if(asks_.begin(), asks_.end(), [&](const Ask& a) {
      return a.sent && !a.ready && a.request.command() == asked.command();
    });
    if (it == asks_.end()) fail(ErrorKind::InvalidInput, "page answer to a request lazy-pages did not send");
    it->answer = std::move(sent.answer);
    it->ready = true;
    if (asked.command() == PageCommand::Close) closeAnswered_ = true;
  } else {
    PageRequest header{sent.answer.substr(0, kPageRequestBytes)};
    if (header.vaddr() != asked.vaddr() || header.dstId() != asked.dstId()) {
      fail(ErrorKind::InvalidInput, "page answer for another address than was asked");
    }
    if (answerCommand_.empty()) answerCommand_ = sent.answer.substr(0, 4);
    uint64_t n = header.pages();
    keep(asked.dstId(), asked.vaddr(), sent.answer.data() + kPageRequestBytes, n, sent.ahead);
    // Asked ahead and answered short (the source's mapping ended inside):
    // the rest is asked for again.
    if (sent.ahead && n < asked.pages()) {
      aheadGaps_.push_back({asked.vaddr() + n * kPageBytes, asked.pages() - n});
    }
  }
  resolve();
}

void PageAnswerer::resolve() {
  // First what goes ahead (a gap left by a short answer, say): a request
  // inside it then waits for it instead of asking on its own.
  askAhead();
  for (auto& ask : asks_) {
    if (ask.ready) continue;
    const PageRequest& r = ask.request;
    if (r.command() != PageCommand::Get) {
      if (!ask.sent) {
        // After what was asked before it: the source's CLOSE ends its serving.
        send(r, false);
        ask.sent = true;
      }
      continue;
    }
    if (uint64_t n = answerFromCache(r, &ask.answer)) {
      ask.ready = true;
      if (!ask.sent) pagesFromCache_ += n;
      continue;
    }
    if (inFlight(r.dstId(), r.vaddr())) continue;
    uint64_t pages = withinLazyRange(r.dstId(), r.vaddr(), ask.enlarged);
    send(r.withPages(pages), false);
    ask.sent = true;
    // lazy-pages' background goes on from here: asking ahead follows it.
    if (r.pages() > 1) {
      aheadTemplate_ = r;
      aheadNext_ = r.vaddr() + pages * kPageBytes;
      aheadGaps_.clear();
    }
  }
  askAhead();
  flush();
}

uint64_t PageAnswerer::withinLazyRange(uint64_t dstId, uint64_t vaddr, uint64_t pages) const {
  auto known = lazy_.find(dstId);
  if (known == lazy_.end()) return pages;
  const auto& ranges = known->second;
  auto it = std::upper_bound(ranges.begin(), ranges.end(), vaddr,
                             [](uint64_t at, const PageRange& range) { return at < range.end(); });
  if (it == ranges.end() || it->vaddr > vaddr) return pages;
  return std::min(pages, (it->end() - vaddr) / kPageBytes);
}

bool PageAnswerer::inFlight(uint64_t dstId, uint64_t vaddr) const {
  for (const Channel& c : channels_) {
    bool covered = std::any_of(c.sent.begin(), c.sent.end(), [&](const Sent& s) {
      const PageRequest& r = s.request;
      return r.command() == PageCommand::Get && r.dstId() == dstId && vaddr >= r.vaddr() &&
             vaddr < r.vaddr() + r.pages() * kPageBytes;
    });
    if (covered) return true;
  }
  return false;
}

void PageAnswerer::askAhead() {
  if (!aheadTemplate_ || closeSent_) return;
  auto known = lazy_.find(aheadTemplate_->dstId());
  if (known == lazy_.end()) return;
  const auto& ranges = known->second;
  while (aheadInFlight_ + kAheadChunkPages <= kAheadInFlightPages) {
    PageRange next;
    if (!aheadGaps_.empty()) {
      next = aheadGaps_.front();  // within a range, at most kReadAheadPages
      aheadGaps_.pop_front();
    } else {
      // The first range that ends after aheadNext_.
      auto it = std::upper_bound(ranges.begin(), ranges.end(), aheadNext_,
                                 [](uint64_t at, const PageRange& range) { return at < range.end(); });
      if (it == ranges.end()) return;
      uint64_t from = std::max(aheadNext_, it->vaddr);
      next = {from, std::min(kAheadChunkPages, (it->end() - from) / kPageBytes)};
      aheadNext_ = next.end();
    }
    if (next.pages == 0) continue;
    send(aheadTemplate_->at(next.vaddr, next.pages), true);
    aheadInFlight_ += next.pages;
    pagesAskedAhead_ += next.pages;
  }
}

void PageAnswerer::reconnected() {
  toSource_.clear();
  // Each channel's answers come in the order of its requests: the order
  // between the two does not matter.
  for (Channel& c : channels_) {
    for (auto& s : c.sent) {
      s.answer.clear();
      toSource_ += s.request.raw;
    }
    for (auto& p : c.tracker.pending()) {
      p.received = 0;
      p.header.clear();
      p.total = p.request.command() == PageCommand::Close ? 4 : 0;
    }
  }
}

void PageAnswerer::flush() {
  while (!asks_.empty() && asks_.front().ready) {
    toLazyPages_ += asks_.front().answer;
    asks_.pop_front();
  }
}

void PageAnswerer::keep(uint64_t dstId, uint64_t vaddr, const char* pages, uint64_t count, bool ahead) {
  for (uint64_t i = 0; i < count; ++i, vaddr += kPageBytes) {
    PageKey key{dstId, vaddr};
    auto [it, added] = cache_.try_emplace(key);
    it->second.bytes.assign(pages + i * kPageBytes, kPageBytes);
    if (added) cacheOrder_.push_back(key);
    if (ahead && !it->second.ahead) ++aheadKept_;
    if (!ahead && it->second.ahead) --aheadKept_;
    it->second.ahead = ahead;
  }
  while (cache_.size() > std::max<uint64_t>(kMaxCachedPages, lazyPages_) && !cacheOrder_.empty()) {
    auto it = cache_.find(cacheOrder_.front());
    if (it != cache_.end()) drop(it);
    cacheOrder_.pop_front();
  }
  // Keys of pages already taken: the order list never outgrows the cache much.
  while (!cacheOrder_.empty() && !cache_.count(cacheOrder_.front())) cacheOrder_.pop_front();
}

void PageAnswerer::drop(std::map<PageKey, Kept>::iterator it) {
  if (it->second.ahead) --aheadKept_;
  cache_.erase(it);
}

uint64_t PageAnswerer::answerFromCache(const PageRequest& request, std::string* answer) {
  uint64_t vaddr = request.vaddr(), id = request.dstId();
  if (!cache_.count({id, vaddr})) return 0;
  std::string pages;
  uint64_t n = 0;
  for (; n < request.pages(); ++n) {
    auto it = cache_.find({id, vaddr + n * kPageBytes});
    if (it == cache_.end()) break;
    pages += it->second.bytes;
    drop(it);
  }
  *answer = pageAnswerHeader(answerCommand_, n, vaddr, id) + pages;
  return n;
}

}  // namespace migrate
