#include "agent/page-answerer.h"

#include <algorithm>

#include "common/error.h"

namespace migrate {

void PageAnswerer::fromLazyPages(PageRequest request) {
  Ask ask;
  ask.request = request;
  if (request.command() == PageCommand::Get) {
    bool inOrder = false;
    if (request.pages() == 1) {
      auto last = lastFault_.find(request.dstId());
      inOrder = last != lastFault_.end() && last->second + kPageBytes == request.vaddr();
      lastFault_[request.dstId()] = request.vaddr();
    }
    if (answerFromCache(request, &ask.localAnswer)) {
      asks_.push_back(std::move(ask));
      flush();
      return;
    }
    // A background chunk, or a fault in order: ask for more while at it.
    if (request.pages() > 1) request = request.withPages(std::max(request.pages(), kReadAheadPages));
    else if (inOrder) request = request.withPages(kFaultReadAheadPages);
  }
  ask.remote = true;
  toSource_ += request.raw;
  remote_.expect(std::move(request));
  asks_.push_back(std::move(ask));
}

void PageAnswerer::fromSource(const char* data, size_t size) {
  remote_.feed(data, size, [&](const PageAnswerTracker::Pending& p, const char* bytes, size_t n) {
    size_t skipped = static_cast<size_t>(std::min<uint64_t>(skip_, n));
    skip_ -= skipped;
    bool complete = p.total != 0 && p.received == p.total;
    if (asks_.empty() || !asks_.front().remote) {
      fail(ErrorKind::InvalidInput, "page answer from the source with no request of lazy-pages waiting for it");
    }
    answerFromSource(asks_.front(), bytes + skipped, n - skipped);
    if (complete) {
      asks_.pop_front();
      flush();
    }
  });
}

void PageAnswerer::answerFromSource(Ask& ask, const char* data, size_t size) {
  if (ask.request.command() == PageCommand::Close) {
    toLazyPages_.append(data, size);
    ask.processed += size;
    if (ask.processed == 4) closeAnswered_ = true;
    return;
  }
  while (size > 0) {
    size_t take;
    if (ask.header.size() < kPageRequestBytes) {
      take = std::min(size, kPageRequestBytes - ask.header.size());
      ask.header.append(data, take);
      if (ask.header.size() == kPageRequestBytes) {
        PageRequest header{ask.header};
        if (answerCommand_.empty()) answerCommand_ = ask.header.substr(0, 4);
        // lazy-pages gets at most what it asked for; the tracker checked
        // the source sent no more than it was asked.
        ask.deliver = std::min(header.pages(), ask.request.pages());
        toLazyPages_ += header.withPages(ask.deliver).raw;
      }
    } else {
      uint64_t at = ask.processed - kPageRequestBytes;
      uint64_t delivered = ask.deliver * kPageBytes;
      if (at < delivered) {
        take = static_cast<size_t>(std::min<uint64_t>(size, delivered - at));
        toLazyPages_.append(data, take);
      } else {
        take = size;
        ask.surplus.append(data, take);
      }
    }
    ask.processed += take;
    data += take;
    size -= take;
  }
  PageRequest header{ask.header};
  if (ask.header.size() == kPageRequestBytes &&
      ask.processed == kPageRequestBytes + header.pages() * kPageBytes && !ask.surplus.empty()) {
    keep(header.dstId(), header.vaddr() + ask.deliver * kPageBytes, ask.surplus);
    ask.surplus.clear();
  }
}

void PageAnswerer::reconnected() {
  auto& pending = remote_.pending();
  skip_ = pending.empty() ? 0 : pending.front().received;
  toSource_.clear();
  for (auto& p : pending) {
    p.received = 0;
    p.header.clear();
    p.total = p.request.command() == PageCommand::Close ? 4 : 0;
    toSource_ += p.request.raw;
  }
}

void PageAnswerer::flush() {
  while (!asks_.empty() && !asks_.front().remote) {
    toLazyPages_ += asks_.front().localAnswer;
    asks_.pop_front();
  }
}

void PageAnswerer::keep(uint64_t dstId, uint64_t vaddr, const std::string& pages) {
  for (size_t at = 0; at + kPageBytes <= pages.size(); at += kPageBytes, vaddr += kPageBytes) {
    PageKey key{dstId, vaddr};
    cache_[key] = pages.substr(at, kPageBytes);
    cacheOrder_.push_back(key);
  }
  while (cache_.size() > kMaxCachedPages && !cacheOrder_.empty()) {
    cache_.erase(cacheOrder_.front());
    cacheOrder_.pop_front();
  }
  // Keys of pages already taken: the order list never outgrows the cache much.
  while (!cacheOrder_.empty() && !cache_.count(cacheOrder_.front())) cacheOrder_.pop_front();
}

bool PageAnswerer::answerFromCache(const PageRequest& request, std::string* answer) {
  uint64_t vaddr = request.vaddr(), id = request.dstId();
  if (!cache_.count({id, vaddr})) return false;
  std::string pages;
  uint64_t n = 0;
  for (; n < request.pages(); ++n) {
    auto it = cache_.find({id, vaddr + n * kPageBytes});
    if (it == cache_.end()) break;
    pages += it->second;
    cache_.erase(it);
  }
  *answer = pageAnswerHeader(answerCommand_, n, vaddr, id) + pages;
  pagesFromCache_ += n;
  return true;
}

}  // namespace migrate
