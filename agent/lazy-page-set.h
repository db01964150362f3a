// The pages the source's CRIU holds for lazy-pages (criu-pagemap.h), per
// process, and which of them the target's relay has asked for: what asking
// ahead (page-answerer.h) may still ask for, never a page twice, never an
// address CRIU does not hold.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <vector>

#include "agent/page-server-protocol.h"

namespace migrate {

class LazyPageSet {
 public:
  LazyPageSet() = default;
  explicit LazyPageSet(const LazyPages& pages);

  bool knows(uint64_t dstId) const { return processes_.count(dstId) != 0; }
  uint64_t totalPages() const { return total_; }
  // `pages` from `vaddr`, or fewer where its range ends; `pages` if `vaddr`
  // is in none.
  uint64_t clamp(uint64_t dstId, uint64_t vaddr, uint64_t pages) const;
  // Marks the known pages among `pages` from `vaddr` asked for (or not).
  void mark(uint64_t dstId, uint64_t vaddr, uint64_t pages, bool asked);
  // The first pages not asked for at or after `from`, at most `most`, inside
  // one range; nullopt when there are none.
  std::optional<PageRange> nextNotAsked(uint64_t dstId, uint64_t from, uint64_t most) const;

 private:
  struct Process {
    std::vector<PageRange> ranges;  // sorted, not overlapping
    std::vector<uint64_t> first;    // index in `asked` of each range's first page
    std::vector<bool> asked;
  };
  // The range holding `vaddr` or the first after it; ranges.size() if none.
  static size_t rangeAt(const Process& p, uint64_t vaddr);

  std::map<uint64_t, Process> processes_;
  uint64_t total_ = 0;
};

}  // namespace migrate
