#include "agent/page-answerer.h"

#include <algorithm>

#include "common/error.h"

namespace migrate {

bool PageAnswerer::knowLazyPages(const LazyPages& pages, uint64_t mostPages) {
  LazyPageSet known(pages);
  if (known.totalPages() > mostPages) return false;
  lazy_ = std::move(known);
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
    } else if (!lazy_.knows(request.dstId())) {
      // Where the source's pages are known, asking ahead brings the rest.
      ask.enlarged = std::max(request.pages(), kReadAheadPages);
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

void PageAnswerer::send(const PageRequest& request, PageChannel channel) {
  Channel& c = channels_[channelIndex(channel)];
  PageRequest sent = request.onChannel(channel);
  if (sent.command() == PageCommand::Get) lazy_.mark(sent.dstId(), sent.vaddr(), sent.pages(), true);
  if (channel == PageChannel::Bulk) aheadInFlight_ += sent.pages();
  toSource_ += sent.raw;
  c.tracker.expect(sent);
  c.sent.push_back({std::move(sent), {}});
}

void PageAnswerer::fromSource(PageChannel channel, const char* data, size_t size) {
  Channel& c = channels_[channelIndex(channel)];
  c.tracker.feed(data, size, [&](const PageAnswerTracker::Pending& p, const char* bytes, size_t n) {
    if (c.sent.empty()) fail(ErrorKind::InvalidInput, "page answer from the source with nothing asked");
    Sent& front = c.sent.front();
    front.answer.append(bytes, n);
    if (p.total == 0 || p.received != p.total) return;
    // Checked before it leaves the queue: a bad answer cuts the connection,
    // and both queues (this and the tracker's) must still hold it then.
    check(front);
    Sent done = std::move(front);
    c.sent.pop_front();
    answered(done);
  });
}

void PageAnswerer::check(const Sent& sent) {
  const PageRequest& asked = sent.request;
  if (asked.command() == PageCommand::Get) {
    PageRequest header{sent.answer.substr(0, kPageRequestBytes)};
    if (header.vaddr() != asked.vaddr() || header.dstId() != asked.dstId()) {
      fail(ErrorKind::InvalidInput, "page answer for another address than was asked");
    }
    return;
  }
  if (waitingFor(asked.command()) == asks_.end()) {
    fail(ErrorKind::InvalidInput, "page answer to a request lazy-pages did not send");
  }
}

std::deque<PageAnswerer::Ask>::iterator PageAnswerer::waitingFor(PageCommand command) {
  return std::find_if(asks_.begin(), asks_.end(),
                      [&](const Ask& a) { return a.sent && !a.ready && a.request.command() == command; });
}

void PageAnswerer::answered(const Sent& sent) {
  const PageRequest& asked = sent.request;
  if (asked.channel() == PageChannel::Bulk) aheadInFlight_ -= asked.pages();
  if (asked.command() != PageCommand::Get) {
    // CLOSE's status goes through to the request it answers.
    auto it = waitingFor(asked.command());
    it->answer = sent.answer;
    it->ready = true;
    if (asked.command() == PageCommand::Close) closeAnswered_ = true;
  } else {
    if (answerCommand_.empty()) answerCommand_ = sent.answer.substr(0, 4);
    uint64_t n = PageRequest{sent.answer.substr(0, kPageRequestBytes)}.pages();
    keep(asked.dstId(), asked.vaddr(), sent.answer.data() + kPageRequestBytes, n);
    // Answered short: the rest was not asked for after all (asked ahead
    // again from there).
    if (n < asked.pages()) {
      uint64_t rest = asked.vaddr() + n * kPageBytes;
      lazy_.mark(asked.dstId(), rest, asked.pages() - n, false);
      if (aheadTemplate_ && aheadTemplate_->dstId() == asked.dstId()) aheadFrom_ = std::min(aheadFrom_, rest);
    }
  }
  resolve();
}

void PageAnswerer::resolve() {
  // First what goes ahead (the rest of a short answer, say): a request
  // inside it then waits for it instead of asking on its own.
  askAhead();
  for (auto& ask : asks_) {
    if (ask.ready) continue;
    const PageRequest& r = ask.request;
    if (r.command() != PageCommand::Get) {
      if (!ask.sent) {
        // After what was asked before it: the source's CLOSE ends its serving.
        send(r, PageChannel::Urgent);
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
    uint64_t pages = lazy_.clamp(r.dstId(), r.vaddr(), ask.enlarged);
    send(r.withPages(pages), PageChannel::Urgent);
    ask.sent = true;
    // lazy-pages' background goes on from here: asking ahead follows it.
    if (r.pages() > 1) {
      aheadTemplate_ = r;
      aheadFrom_ = r.vaddr();
    }
  }
  askAhead();
  flush();
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
  uint64_t id = aheadTemplate_->dstId();
  while (aheadInFlight_ + kAheadChunkPages <= kAheadInFlightPages) {
    auto next = lazy_.nextNotAsked(id, aheadFrom_, kAheadChunkPages);
    if (!next) return;
    aheadFrom_ = next->end();
    send(aheadTemplate_->at(next->vaddr, next->pages), PageChannel::Bulk);
    pagesAskedAhead_ += next->pages;
  }
}

void PageAnswerer::reconnected() {
  toSource_.clear();
  if (closeSent_) {
    // lazy-pages has every page; CRIU must see nothing after its CLOSE.
    Channel& bulk = channels_[channelIndex(PageChannel::Bulk)];
    bulk.sent.clear();
    bulk.tracker.pending().clear();
    aheadInFlight_ = 0;
  }
  // Each channel's answers come in the order of its requests: the order
  // between the two does not matter (a CLOSE is alone by then).
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

void PageAnswerer::keep(uint64_t dstId, uint64_t vaddr, const char* pages, uint64_t count) {
  for (uint64_t i = 0; i < count; ++i, vaddr += kPageBytes) {
    PageKey key{dstId, vaddr};
    auto [it, added] = cache_.try_emplace(key);
    it->second.assign(pages + i * kPageBytes, kPageBytes);
    if (added) cacheOrder_.push_back(key);
  }
  while (cache_.size() > std::max<uint64_t>(kMaxCachedPages, lazy_.totalPages()) && !cacheOrder_.empty()) {
    cache_.erase(cacheOrder_.front());
    cacheOrder_.pop_front();
  }
  // Keys of pages already taken: the order list never outgrows the cache much.
  while (!cacheOrder_.empty() && !cache_.count(cacheOrder_.front())) cacheOrder_.pop_front();
}

uint64_t PageAnswerer::answerFromCache(const PageRequest& request, std::string* answer) {
  uint64_t vaddr = request.vaddr(), id = request.dstId();
  if (!cache_.count({id, vaddr})) return 0;
  std::string pages;
  uint64_t n = 0;
  for (; n < request.pages(); ++n) {
    auto it = cache_.find({id, vaddr + n * kPageBytes});
    if (it == cache_.end()) break;
    pages += it->second;
    cache_.erase(it);
  }
  *answer = pageAnswerHeader(answerCommand_, n, vaddr, id) + pages;
  return n;
}

}  // namespace migrate
