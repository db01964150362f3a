#include "agent/criu-pagemap.h"

#include <algorithm>
#include <regex>

#include "agent/criu-images.h"
#include "common/error.h"
#include "pagemap.pb.h"

namespace migrate {

namespace {

// criu/include/pagemap.h
constexpr uint32_t kPageIsLazy = 1 << 1;

std::vector<PageRange> lazyRanges(const fs::path& path) {
  CriuImageReader image(path, criu::kPagemapMagic);
  criupb::pagemap_head head;
  if (!image.next(head)) fail(ErrorKind::InvalidInput, "criu image `" + image.name() + "`: no pagemap head");
  std::vector<PageRange> out;
  criupb::pagemap_entry entry;
  while (image.next(entry)) {
    if (!(entry.flags() & kPageIsLazy)) continue;
    uint64_t pages = entry.has_nr_pages() ? entry.nr_pages() : entry.compat_nr_pages();
    if (entry.vaddr() % kPageBytes != 0 || pages == 0 || pages > (UINT64_MAX - entry.vaddr()) / kPageBytes) {
      fail(ErrorKind::InvalidInput, "criu image `" + image.name() + "`: a lazy entry of " + std::to_string(pages) +
                                        " pages at " + std::to_string(entry.vaddr()));
    }
    out.push_back({entry.vaddr(), pages});
  }
  std::sort(out.begin(), out.end(), [](const PageRange& a, const PageRange& b) { return a.vaddr < b.vaddr; });
  for (size_t i = 1; i < out.size(); ++i) {
    if (out[i - 1].end() > out[i].vaddr) {
      fail(ErrorKind::InvalidInput, "criu image `" + image.name() + "`: lazy entries overlap at " +
                                        std::to_string(out[i].vaddr));
    }
  }
  return out;
}

}  // namespace

LazyPages readLazyPages(const fs::path& checkpointDir) {
  static const std::regex kName("pagemap-([0-9]{1,9})\\.img");
  LazyPages out;
  for (const auto& file : fs::directory_iterator(checkpointDir)) {
    std::smatch m;
    std::string name = file.path().filename().string();
    if (!std::regex_match(name, m, kName)) continue;
    auto ranges = lazyRanges(file.path());  // not following a symlink
    if (!ranges.empty()) out[std::stoull(m[1].str())] = std::move(ranges);
  }
  return out;
}

}  // namespace migrate
