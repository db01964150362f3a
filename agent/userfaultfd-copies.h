// Copies of another process's userfaultfds, and the cgroup freeze that goes
// with them (docs/design-notes.md, "Post-copy survives the agents").
//
// A userfaultfd keeps a restored process's faults waiting only while some
// process holds it open; once the last holder closes it, a fault is served
// from the zero page. lazy-pages holds them; the target's page relay and the
// target agent each hold copies, so that no single death lets a process read
// a page that did not come from the source. Whoever sees the page source
// gone freezes the container before letting go.
#pragma once

#include <sys/types.h>

#include <mutex>
#include <set>
#include <vector>

#include "common/fd.h"

namespace migrate {

// Any thread.
class UserfaultfdCopies {
 public:
  // Takes a copy (pidfd_getfd) of each userfaultfd of `pid` not yet held.
  // Returns how many are held in all. Quiet if `pid` is gone.
  size_t takeFrom(pid_t pid);
  size_t size() const {
    std::lock_guard lock(mutex_);
    return copies_.size();
  }

 private:
  mutable std::mutex mutex_;
  pid_t pid_ = 0;
  Fd pidfd_;
  std::set<int> held_;  // fd numbers in `pid_`
  std::vector<Fd> copies_;
};

}  // namespace migrate
