// What a pagecheck payload (tests/payloads/pagecheck.c) must hold, as the
// client that drives it knows it: the version of every page it had
// acknowledged and how many writes were acknowledged. Each reply is checked
// against it, and the first that disagrees is described precisely enough to
// tell a lost write from a wrong byte.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace migrate::test {

class PageCheckModel {
 public:
  // A payload started as `pagecheck PORT MIB SEED`.
  PageCheckModel(uint64_t mib, uint64_t seed);

  uint64_t pages() const { return versions_.size(); }
  uint64_t seed() const { return seed_; }
  uint64_t acknowledged() const { return acknowledged_; }
  uint64_t versionOf(uint64_t page) const { return versions_.at(page); }
  // Pages written at least once, in the order of their first write.
  const std::vector<uint64_t>& written() const { return written_; }
  // The version the next write of `page` writes.
  uint64_t nextVersion(uint64_t page) const { return versions_.at(page) + 1; }

  // The reply `ok <counter>` to `W page version`: the counter must be the
  // writes acknowledged so far plus this one. Records the write if so.
  std::optional<std::string> acknowledge(uint64_t page, uint64_t version, uint64_t counter);
  // The reply `page <page> <version> <checksum>` to `R page`: the version
  // last acknowledged, with the checksum of (seed, page, that version).
  std::optional<std::string> checkRead(uint64_t page, uint64_t version, uint64_t checksum) const;
  // The reply `count <counter>` to `C`: every acknowledged write, no more.
  std::optional<std::string> checkCount(uint64_t counter) const;

 private:
  // `counter` writes counted by the payload where `expected` should be.
  std::optional<std::string> checkCounter(uint64_t counter, uint64_t expected, const std::string& request) const;

  uint64_t seed_;
  std::vector<uint64_t> versions_;
  std::vector<uint64_t> written_;
  uint64_t acknowledged_ = 0;
};

// A checksum as the payload prints it: 16 hex digits.
std::string checksumText(uint64_t checksum);

}  // namespace migrate::test
