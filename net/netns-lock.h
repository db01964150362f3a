// Locks a container's netns shut while its address exists but its sockets do
// not yet (between CNI ADD and the end of `runc restore`). DESIGN.md, "Lock
// the target's netns before the address appears": a peer's retransmission
// that reaches a kernel with the IP but no socket gets a RST and the
// migrated TCP connection dies; dropped instead, it is retried after restore.
//
// The lock is an nftables table `inet migrate_lock` in that netns with an
// input chain at priority -300 (before conntrack, so dropped packets leave no
// state), policy drop, loopback accepted. Dropping input is enough: the RST
// the lock exists to prevent is the kernel's answer to an input packet.
// Output stays open on purpose: the restored sockets retransmit what was in
// flight at the freeze (and send the window probe of leaving TCP repair) while
// `runc restore` is still finishing; with output dropped too, those were lost
// and the peer waited out the sockets' retransmission backoff (seen: 3.5 s of
// client stall for 0.5 s of downtime; 0.2-0.5 s with output open). ARP is a
// separate nftables family, so neighbours still resolve the address.
#pragma once

#include <filesystem>

namespace migrate {

namespace fs = std::filesystem;

// Installs (or re-installs) the lock. Uses the `nft` CLI inside the netns.
void lockNetns(const fs::path& netns);
// Removes the lock; no-op when there is none.
void unlockNetns(const fs::path& netns);
// Deletes the nftables tables CRIU's own network lock leaves (`CRIU-<pid>`),
// for the one path where CRIU does not remove them itself (a failed lazy
// dump, agent/criu-network-lock.h). No-op when there are none.
void removeCriuLockTables(const fs::path& netns);

// True while the lock table exists in the netns.
bool isNetnsLocked(const fs::path& netns);

// Locks on construction; unlocks when it dies unless released (e.g. the netns
// is being torn down anyway). unlock() reports failure; the destructor logs it.
class NetnsLockGuard {
 public:
  explicit NetnsLockGuard(fs::path netns);
  // Takes over the lock another process installed in `netns` (the network
  // hook, agent/network-hook.h) without locking again.
  static NetnsLockGuard adopt(fs::path netns);
  NetnsLockGuard(NetnsLockGuard&& other) noexcept;
  NetnsLockGuard& operator=(NetnsLockGuard&&) = delete;
  ~NetnsLockGuard();
  void unlock();
  void release();

 private:
  struct Adopt {};
  NetnsLockGuard(Adopt, fs::path netns) : netns_(std::move(netns)) {}

  fs::path netns_;
};

}  // namespace migrate
