#include "tests/support/page-check-model.h"

#include <cstdio>

#include "tests/payloads/pagecheck-content.h"

namespace migrate::test {

PageCheckModel::PageCheckModel(uint64_t mib, uint64_t seed)
    : seed_(seed), versions_(mib * 1024 * 1024 / PAGECHECK_PAGE_SIZE, 0) {}

std::string checksumText(uint64_t checksum) {
  char text[17];
  std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(checksum));
  return text;
}

std::optional<std::string> PageCheckModel::checkCounter(uint64_t counter, uint64_t expected,
                                                        const std::string& request) const {
  if (counter == expected) return std::nullopt;
  // `counter` includes the write being answered, if any: the payload
  // remembers `remembered` writes where `before` were acknowledged.
  uint64_t before = acknowledged_;
  uint64_t remembered = counter - (expected - acknowledged_);
  if (counter < expected) {
    return "counter went back from " + std::to_string(before) + " to " + std::to_string(remembered) + " (" +
           request + " answered " + std::to_string(counter) + "): " + std::to_string(before - remembered) +
           " acknowledged writes lost";
  }
  return "counter jumped from " + std::to_string(before) + " to " + std::to_string(remembered) + " (" + request +
         " answered " + std::to_string(counter) + "): " + std::to_string(remembered - before) +
         " writes counted that were never acknowledged";
}

std::optional<std::string> PageCheckModel::acknowledge(uint64_t page, uint64_t version, uint64_t counter) {
  auto request = "W " + std::to_string(page) + " " + std::to_string(version);
  // A counter below this write's own (0) cannot be one of the cases above.
  if (counter == 0) return request + " answered counter 0: the write was not counted";
  if (auto wrong = checkCounter(counter, acknowledged_ + 1, request)) return wrong;
  if (versions_.at(page) == 0) written_.push_back(page);
  versions_.at(page) = version;
  acknowledged_ = counter;
  return std::nullopt;
}

std::optional<std::string> PageCheckModel::checkRead(uint64_t page, uint64_t version, uint64_t checksum) const {
  uint64_t expected = versions_.at(page);
  uint64_t expectedChecksum = pagecheckExpectedChecksum(seed_, page, expected);
  if (version == expected && checksum == expectedChecksum) return std::nullopt;
  return "read page " + std::to_string(page) + ": version " + std::to_string(version) + " checksum " +
         checksumText(checksum) + ", expected version " + std::to_string(expected) + " checksum " +
         checksumText(expectedChecksum);
}

std::optional<std::string> PageCheckModel::checkCount(uint64_t counter) const {
  return checkCounter(counter, acknowledged_, "C");
}

}  // namespace migrate::test
