#include "tests/support/hostile-bundle.h"

#include <archive.h>
#include <archive_entry.h>
#include <sys/stat.h>

#include <algorithm>
#include <memory>
#include <set>
#include <vector>

#include "common/error.h"

namespace migrate::test {

namespace {

// The top-level entries in the order readBundle enforces (agent/bundle.h).
const char* const kOrder[] = {"manifest.json", "config.dump",   "spec.dump", "network.status", "checkpoint",
                              "rootfs-diff",   "deleted.files", "ctr.log",   "stats-dump"};

void check(archive* a, int r, const std::string& what) {
  if (r < ARCHIVE_WARN) fail("hostile bundle: " + what + ": " + (archive_error_string(a) ? archive_error_string(a) : "?"));
}

uint64_t regularBytes(const fs::path& root) {
  uint64_t total = 0;
  std::set<std::pair<dev_t, ino_t>> seen;
  if (!fs::exists(root)) return 0;
  for (auto& e : fs::recursive_directory_iterator(root)) {
    struct stat st;
    if (::lstat(e.path().c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
    if (st.st_nlink > 1 && !seen.insert({st.st_dev, st.st_ino}).second) continue;
    total += static_cast<uint64_t>(st.st_size);
  }
  return total;
}

// Relative paths under `top`, parents before children, siblings sorted.
void collect(const fs::path& base, const fs::path& relative, std::vector<fs::path>& out) {
  out.push_back(relative);
  if (!fs::is_directory(fs::symlink_status(base / relative))) return;
  std::vector<fs::path> children;
  for (auto& e : fs::directory_iterator(base / relative)) children.push_back(relative / e.path().filename());
  std::sort(children.begin(), children.end());
  for (auto& child : children) collect(base, child, out);
}

}  // namespace

HostileBundle::HostileBundle(const fs::path& bundle) : dir_("/var/tmp", "hostile-bundle") {
  std::unique_ptr<archive, decltype(&archive_read_free)> in(archive_read_new(), archive_read_free);
  archive_read_support_filter_zstd(in.get());
  archive_read_support_format_tar(in.get());
  check(in.get(), archive_read_open_filename(in.get(), bundle.c_str(), 1 << 20), "open " + bundle.string());
  std::unique_ptr<archive, decltype(&archive_write_free)> disk(archive_write_disk_new(), archive_write_free);
  archive_write_disk_set_options(disk.get(), ARCHIVE_EXTRACT_PERM | ARCHIVE_EXTRACT_OWNER | ARCHIVE_EXTRACT_TIME |
                                                 ARCHIVE_EXTRACT_XATTR | ARCHIVE_EXTRACT_SECURE_NODOTDOT |
                                                 ARCHIVE_EXTRACT_SECURE_SYMLINKS);
  archive_entry* entry;
  for (;;) {
    int r = archive_read_next_header(in.get(), &entry);
    if (r == ARCHIVE_EOF) break;
    check(in.get(), r, "read " + bundle.string());
    // Our own source's bundle, but still: only names beneath dir() (the
    // absolute dir() prefix itself rules out ARCHIVE_EXTRACT_SECURE_NOABSOLUTEPATHS).
    std::string name = archive_entry_pathname(entry);
    if (name.empty() || name[0] == '/') fail("hostile bundle: entry `" + name + "` is absolute");
    archive_entry_copy_pathname(entry, (dir() / name).c_str());
    if (auto* link = archive_entry_hardlink(entry)) archive_entry_copy_hardlink(entry, (dir() / link).c_str());
    check(disk.get(), archive_write_header(disk.get(), entry), "write " + name);
    const void* block;
    size_t size;
    la_int64_t offset;
    while ((r = archive_read_data_block(in.get(), &block, &size, &offset)) == ARCHIVE_OK) {
      check(disk.get(), static_cast<int>(archive_write_data_block(disk.get(), block, size, offset)), "write " + name);
    }
    check(in.get(), r, "read " + name);
    check(disk.get(), archive_write_finish_entry(disk.get()), "finish " + name);
  }
}

nlohmann::json HostileBundle::manifest() const { return nlohmann::json::parse(readFile(dir() / "manifest.json")); }

void HostileBundle::setManifest(const nlohmann::json& manifest) const {
  writeFileAtomic(dir() / "manifest.json", manifest.dump(2) + "\n");
}

void HostileBundle::repack(const fs::path& out, bool fixSizes) const {
  if (fixSizes) {
    auto m = manifest();
    m["checkpointBytes"] = regularBytes(dir() / "checkpoint");
    m["rootfsDiffBytes"] = regularBytes(dir() / "rootfs-diff");
    setManifest(m);
  }
  std::vector<fs::path> paths;
  for (auto* top : kOrder) {
    if (fs::exists(fs::symlink_status(dir() / top))) collect(dir(), top, paths);
  }
  std::unique_ptr<archive, decltype(&archive_write_free)> a(archive_write_new(), archive_write_free);
  archive_write_add_filter_zstd(a.get());
  archive_write_set_format_pax_restricted(a.get());
  archive_write_set_format_option(a.get(), "pax", "xattrheader", "SCHILY");
  check(a.get(), archive_write_open_filename(a.get(), out.c_str()), "open " + out.string());
  std::unique_ptr<archive, decltype(&archive_read_free)> disk(archive_read_disk_new(), archive_read_free);
  archive_read_disk_set_standard_lookup(disk.get());
  std::unique_ptr<archive_entry_linkresolver, decltype(&archive_entry_linkresolver_free)> links(
      archive_entry_linkresolver_new(), archive_entry_linkresolver_free);
  archive_entry_linkresolver_set_strategy(links.get(), archive_format(a.get()));
  for (auto& relative : paths) {
    auto full = dir() / relative;
    archive_entry* entry = archive_entry_new();
    archive_entry_copy_sourcepath(entry, full.c_str());
    check(disk.get(), archive_read_disk_entry_from_file(disk.get(), entry, -1, nullptr), "stat " + full.string());
    archive_entry_copy_pathname(entry, relative.c_str());
    archive_entry* spare = nullptr;
    archive_entry_linkify(links.get(), &entry, &spare);
    if (entry) {
      check(a.get(), archive_write_header(a.get(), entry), "write " + relative.string());
      if (archive_entry_filetype(entry) == AE_IFREG && archive_entry_size(entry) > 0) {
        auto data = readFile(full);
        if (archive_write_data(a.get(), data.data(), data.size()) != static_cast<la_ssize_t>(data.size())) {
          check(a.get(), ARCHIVE_FATAL, "write " + relative.string());
        }
      }
      archive_entry_free(entry);
    }
  }
  check(a.get(), archive_write_close(a.get()), "close " + out.string());
}

}  // namespace migrate::test
