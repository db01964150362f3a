#include "agent/criu-pagemap.h"

#include <catch2/catch.hpp>

#include "agent/criu-images.h"
#include "common/error.h"
#include "common/files.h"
#include "criu/images/pagemap.pb.h"

using namespace migrate;

namespace {

constexpr uint32_t kLazy = 2, kPresent = 4;

criupb::pagemap_entry entry(uint64_t vaddr, uint64_t pages, uint32_t flags) {
  criupb::pagemap_entry e;
  e.set_vaddr(vaddr);
  e.set_compat_nr_pages(0);
  e.set_nr_pages(pages);
  e.set_flags(flags);
  return e;
}

void writePagemap(const fs::path& path, const std::vector<criupb::pagemap_entry>& entries) {
  criupb::pagemap_head head;
  head.set_pages_id(1);
  std::vector<const google::protobuf::MessageLite*> all = {&head};
  for (auto& e : entries) all.push_back(&e);
  writeCriuImage(path, criu::kPagemapMagic, all);
}

}  // namespace

TEST_CASE("the lazy pages of each process are read from its pagemap, sorted, the others left out") {
  TempDir dir(fs::temp_directory_path(), "pagemap");
  writePagemap(dir.path() / "pagemap-1.img", {entry(0x400000, 1, kPresent), entry(0x7f0000200000, 4, kLazy),
                                              entry(0x7f0000000000, 256, kLazy | kPresent)});
  writePagemap(dir.path() / "pagemap-12.img", {entry(0x400000, 3, kPresent)});
  writePagemap(dir.path() / "pagemap-shmem-5.img", {entry(0x1000, 3, kLazy)});
  auto lazy = readLazyPages(dir.path());
  REQUIRE(lazy.size() == 1);  // pid 12 has none; shared memory is not a process's
  REQUIRE(lazy.count(1) == 1);
  auto& ranges = lazy.at(1);
  REQUIRE(ranges.size() == 2);
  CHECK((ranges[0].vaddr == 0x7f0000000000 && ranges[0].pages == 256));
  CHECK((ranges[1].vaddr == 0x7f0000200000 && ranges[1].pages == 4));
  CHECK(ranges[0].end() == 0x7f0000100000);
}

TEST_CASE("a pagemap CRIU would not write is refused, naming it") {
  TempDir dir(fs::temp_directory_path(), "pagemap");
  SECTION("overlapping lazy entries") {
    writePagemap(dir.path() / "pagemap-1.img", {entry(0x7f0000000000, 16, kLazy), entry(0x7f0000008000, 4, kLazy)});
  }
  SECTION("an address off a page") {
    writePagemap(dir.path() / "pagemap-1.img", {entry(0x7f0000000010, 1, kLazy)});
  }
  SECTION("a range past the end of the address space") {
    writePagemap(dir.path() / "pagemap-1.img", {entry(0xfffffffffffff000, 2, kLazy)});
  }
  SECTION("a symlink") {
    writePagemap(dir.path() / "elsewhere.img", {entry(0x7f0000000000, 1, kLazy)});
    fs::create_symlink("elsewhere.img", dir.path() / "pagemap-1.img");
  }
  SECTION("no head") { writeCriuImage(dir.path() / "pagemap-1.img", criu::kPagemapMagic, {}); }
  try {
    readLazyPages(dir.path());
    FAIL("accepted");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::InvalidInput);
    CHECK(std::string(e.what()).find("pagemap-1.img") != std::string::npos);
  }
}
