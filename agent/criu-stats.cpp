#include "agent/criu-stats.h"

#include <cstring>

#include "common/files.h"

namespace migrate {

namespace {

// stats.proto: DumpStatsEntry and RestoreStatsEntry field numbers.
const std::map<uint32_t, std::string> kDumpFields = {
    {1, "freezingTime"}, {2, "frozenTime"},         {3, "memdumpTime"},  {4, "memwriteTime"}, {5, "pagesScanned"},
    {6, "pagesSkippedParent"}, {7, "pagesWritten"}, {8, "irmapResolve"}, {9, "pagesLazy"}};
const std::map<uint32_t, std::string> kRestoreFields = {
    {1, "pagesCompared"}, {2, "pagesSkippedCow"}, {3, "forkingTime"}, {4, "restoreTime"}, {5, "pagesRestored"}};

// A protobuf reader for what these messages use: varints and nested messages.
class Fields {
 public:
  Fields(const char* data, size_t size) : p_(reinterpret_cast<const uint8_t*>(data)), end_(p_ + size) {}

  // Next field: number, and either a varint or a length-delimited span.
  bool next(uint32_t& field, uint64_t& value, const char*& bytes, size_t& length) {
    if (p_ >= end_) return false;
    uint64_t key;
    if (!varint(key)) return false;
    field = static_cast<uint32_t>(key >> 3);
    switch (key & 7) {
      case 0:
        bytes = nullptr;
        return varint(value);
      case 2: {
        uint64_t n;
        if (!varint(n) || n > static_cast<uint64_t>(end_ - p_)) return false;
        bytes = reinterpret_cast<const char*>(p_);
        length = static_cast<size_t>(n);
        p_ += n;
        return true;
      }
      case 1:
        if (end_ - p_ < 8) return false;
        p_ += 8;
        bytes = nullptr;
        value = 0;
        return true;
      case 5:
        if (end_ - p_ < 4) return false;
        p_ += 4;
        bytes = nullptr;
        value = 0;
        return true;
      default:
        return false;
    }
  }

 private:
  bool varint(uint64_t& out) {
    out = 0;
    for (int shift = 0; shift < 64 && p_ < end_; shift += 7) {
      uint8_t b = *p_++;
      out |= uint64_t(b & 0x7f) << shift;
      if (!(b & 0x80)) return true;
    }
    return false;
  }

  const uint8_t* p_;
  const uint8_t* end_;
};

}  // namespace

std::optional<CriuStats> parseCriuStats(const std::string& image, bool dump) {
  if (image.size() < 12) return std::nullopt;
  uint32_t size;
  std::memcpy(&size, image.data() + 8, 4);  // after IMG_SERVICE_MAGIC and STATS_MAGIC
  if (size > image.size() - 12) return std::nullopt;
  Fields entry(image.data() + 12, size);
  const auto& names = dump ? kDumpFields : kRestoreFields;
  uint32_t field;
  uint64_t value;
  const char* bytes;
  size_t length = 0;
  while (entry.next(field, value, bytes, length)) {
    if (field != (dump ? 1u : 2u) || !bytes) continue;  // StatsEntry.dump = 1, .restore = 2
    CriuStats out;
    Fields stats(bytes, length);
    while (stats.next(field, value, bytes, length)) {
      auto it = names.find(field);
      if (it == names.end() || bytes) continue;
      bool time = it->second.size() > 4 && it->second.compare(it->second.size() - 4, 4, "Time") == 0;
      out[it->second] = time ? value * 1000 : value;
    }
    return out;
  }
  return std::nullopt;
}

std::optional<CriuStats> readCriuDumpStats(const std::filesystem::path& file) {
  auto image = readFileIfExists(file);
  return image ? parseCriuStats(*image, true) : std::nullopt;
}

std::optional<CriuStats> readCriuRestoreStats(const std::filesystem::path& file) {
  auto image = readFileIfExists(file);
  return image ? parseCriuStats(*image, false) : std::nullopt;
}

}  // namespace migrate
