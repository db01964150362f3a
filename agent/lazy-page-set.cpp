#include "agent/lazy-page-set.h"

#include <algorithm>

namespace migrate {

LazyPageSet::LazyPageSet(const LazyPages& pages) {
  for (const auto& [id, ranges] : pages) {
    Process p;
    p.ranges = ranges;
    uint64_t n = 0;
    for (const auto& range : ranges) {
      p.first.push_back(n);
      n += range.pages;
    }
    p.asked.assign(n, false);
    total_ += n;
    processes_[id] = std::move(p);
  }
}

size_t LazyPageSet::rangeAt(const Process& p, uint64_t vaddr) {
  auto it = std::upper_bound(p.ranges.begin(), p.ranges.end(), vaddr,
                             [](uint64_t at, const PageRange& range) { return at < range.end(); });
  return static_cast<size_t>(it - p.ranges.begin());
}

uint64_t LazyPageSet::clamp(uint64_t dstId, uint64_t vaddr, uint64_t pages) const {
  auto it = processes_.find(dstId);
  if (it == processes_.end()) return pages;
  const Process& p = it->second;
  size_t r = rangeAt(p, vaddr);
  if (r == p.ranges.size() || p.ranges[r].vaddr > vaddr) return pages;
  return std::min(pages, (p.ranges[r].end() - vaddr) / kPageBytes);
}

void LazyPageSet::mark(uint64_t dstId, uint64_t vaddr, uint64_t pages, bool asked) {
  auto it = processes_.find(dstId);
  if (it == processes_.end()) return;
  Process& p = it->second;
  uint64_t end = vaddr + pages * kPageBytes;
  for (size_t r = rangeAt(p, vaddr); r < p.ranges.size() && p.ranges[r].vaddr < end; ++r) {
    const PageRange& range = p.ranges[r];
    uint64_t from = std::max(vaddr, range.vaddr), to = std::min(end, range.end());
    for (uint64_t at = from; at < to; at += kPageBytes) {
      p.asked[p.first[r] + (at - range.vaddr) / kPageBytes] = asked;
    }
  }
}

std::optional<PageRange> LazyPageSet::nextNotAsked(uint64_t dstId, uint64_t from, uint64_t most) const {
  auto it = processes_.find(dstId);
  if (it == processes_.end() || most == 0) return std::nullopt;
  const Process& p = it->second;
  for (size_t r = rangeAt(p, from); r < p.ranges.size(); ++r) {
    const PageRange& range = p.ranges[r];
    uint64_t i = p.first[r] + (std::max(from, range.vaddr) - range.vaddr) / kPageBytes;
    uint64_t end = p.first[r] + range.pages;
    while (i < end && p.asked[i]) ++i;
    if (i == end) continue;
    uint64_t n = 0;
    while (i + n < end && n < most && !p.asked[i + n]) ++n;
    return PageRange{range.vaddr + (i - p.first[r]) * kPageBytes, n};
  }
  return std::nullopt;
}

}  // namespace migrate
