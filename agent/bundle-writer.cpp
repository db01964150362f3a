#include "agent/bundle-writer.h"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/xattr.h>

#include <algorithm>
#include <exception>
#include <map>
#include <memory>
#include <set>
#include <vector>

#include "agent/bundle-signature.h"
#include "agent/rootfs-diff.h"
#include "agent/tar-stream.h"
#include "common/error.h"
#include "common/files.h"
#include "common/log.h"
#include "common/syscall.h"

namespace migrate {

namespace {

constexpr size_t kChunkBytes = 1 << 20;

enum class TreeKind { Checkpoint, Upper };

// Calls `visit(relative, stat)` for `root` ("" first) and everything below it,
// parents before children, siblings sorted by name so a bundle of the same
// tree is the same bytes.
template <typename Visit>
void walkTree(const fs::path& root, const std::string& relative, Visit&& visit) {
  fs::path path = relative.empty() ? root : root / relative;
  struct stat st;
  SYSCALL(::lstat(path.c_str(), &st), "lstat", path.string());
  visit(relative, st);
  if (!S_ISDIR(st.st_mode)) return;
  std::vector<std::string> names;
  std::error_code ec;
  for (fs::directory_iterator it(path, ec), end; !ec && it != end; it.increment(ec)) {
    names.push_back(it->path().filename().string());
  }
  if (ec) fail("bundle: list " + path.string() + ": " + ec.message());
  std::sort(names.begin(), names.end());
  for (auto& name : names) walkTree(root, relative.empty() ? name : relative + "/" + name, visit);
}

// What a tree contributes to the bundle, as the manifest declares it
// (agent/bundle.h): regular-file bytes, each hardlinked inode once, and
// entries, whiteouts included.
struct TreeFigures {
  uint64_t bytes = 0;
  uint64_t entries = 0;
  bool operator==(const TreeFigures&) const = default;
};

// How addTree() carries each file of a tree; figuresOf() counts the same way.
enum class Carry { Entry, Whiteout, Skip };

Carry carryOf(const struct stat& st, TreeKind kind) {
  if (kind == TreeKind::Upper && isWhiteout(st)) return Carry::Whiteout;
  // A socket file is only a name; the process that bound it is restored by
  // CRIU, which binds it again.
  if (kind == TreeKind::Upper && S_ISSOCK(st.st_mode)) return Carry::Skip;
  return Carry::Entry;
}

TreeFigures figuresOf(const fs::path& root, TreeKind kind) {
  TreeFigures figures;
  std::set<std::pair<dev_t, ino_t>> seen;
  walkTree(root, "", [&](const std::string&, const struct stat& st) {
    Carry carry = carryOf(st, kind);
    if (carry == Carry::Skip) return;
    ++figures.entries;
    if (carry != Carry::Entry || !S_ISREG(st.st_mode)) return;
    if (st.st_nlink > 1 && !seen.insert({st.st_dev, st.st_ino}).second) return;
    figures.bytes += static_cast<uint64_t>(st.st_size);
  });
  return figures;
}

std::string fileTypeName(mode_t mode) {
  if (S_ISFIFO(mode)) return "fifo";
  if (S_ISCHR(mode)) return "character device";
  if (S_ISBLK(mode)) return "block device";
  if (S_ISSOCK(mode)) return "socket";
  return "special file";
}

using EntryPtr = std::unique_ptr<archive_entry, decltype(&archive_entry_free)>;

class BundleWriter {
 public:
  BundleWriter(OutputStream& out, std::function<void(uint64_t)> onProgress)
      : onProgress_(std::move(onProgress)),
        archive_(out, [this](const void* data, size_t size) { tarHash_.update(data, size); }) {
    // Restricted pax: ustar headers, plus a pax header only where needed
    // (xattrs, long names, big ids), so GNU tar lists a bundle cleanly.
    check(archive_write_set_format_pax_restricted(archive_.get()), "set pax format");
    // SCHILY.xattr is what GNU tar and libarchive both read.
    check(archive_write_set_format_option(archive_.get(), "pax", "xattrheader", "SCHILY"), "set xattrheader");
    // No blocking into 10 KiB records: every byte reaches writeCallback as
    // soon as it is formatted, so tarDigest() sees exactly what came before.
    check(archive_write_set_bytes_per_block(archive_.get(), 0), "set bytes per block");
    check(archive_.open(), "open");
  }
  BundleWriter(const BundleWriter&) = delete;
  BundleWriter& operator=(const BundleWriter&) = delete;

  void addBytes(std::string_view name, std::string_view content) {
    EntryPtr entry = newEntry(name);
    archive_entry_set_filetype(entry.get(), AE_IFREG);
    archive_entry_set_perm(entry.get(), 0644);
    archive_entry_set_size(entry.get(), static_cast<la_int64_t>(content.size()));
    archive_entry_set_mtime(entry.get(), ::time(nullptr), 0);
    writeHeader(entry.get());
    writeData(content.data(), content.size());
  }

  // Returns false if the file does not exist. A file larger than `maxBytes`
  // goes as its last `maxBytes`.
  bool addFile(std::string_view name, const fs::path& path, uint64_t maxBytes = UINT64_MAX) {
    int raw = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (raw < 0) {
      if (errno == ENOENT) return false;
      failErrno(errno, "open " + path.string());
    }
    Fd fd(raw);
    struct stat st;
    SYSCALL(::fstat(fd.get(), &st), "fstat", path.string());
    if (!S_ISREG(st.st_mode)) fail(ErrorKind::InvalidInput, "bundle: `" + path.string() + "` is not a regular file");
    auto size = static_cast<uint64_t>(st.st_size);
    if (size > maxBytes) {
      SYSCALL(::lseek(fd.get(), static_cast<off_t>(size - maxBytes), SEEK_SET), "lseek", path.string());
      st.st_size = static_cast<off_t>(maxBytes);
      size = maxBytes;
    }
    EntryPtr entry = entryFromStat(name, st);
    writeHeader(entry.get());
    copyData(fd.get(), size, path);
    return true;
  }

  // Returns what it wrote, as figuresOf() counts; fills `deleted` with the
  // upper dir's whiteouts.
  // `containerIds`: the upper dir of a container in a user namespace holds
  // host ids; the bundle carries the container's (agent/id-mapping.h).
  TreeFigures addTree(std::string_view prefix, const fs::path& root, TreeKind kind, std::vector<std::string>* deleted,
                      const std::optional<IdMapping>& containerIds = std::nullopt) {
    TreeFigures figures;
    std::map<std::pair<dev_t, ino_t>, std::string> firstLink;
    walkTree(root, "", [&](const std::string& relative, const struct stat& st) {
      fs::path path = relative.empty() ? root : root / relative;
      std::string name = relative.empty() ? std::string(prefix) : std::string(prefix) + "/" + relative;
      switch (carryOf(st, kind)) {
        case Carry::Skip:
          logWarn("bundle: skipping socket " + path.string());
          return;
        case Carry::Whiteout:
          ++figures.entries;
          deleted->push_back(relative);
          return;
        case Carry::Entry:
          ++figures.entries;
          break;
      }
      if (!S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode) && !S_ISLNK(st.st_mode)) {
        fail(ErrorKind::Unimplemented,
             "bundle: `" + path.string() + "` is a " + fileTypeName(st.st_mode) + ", which a bundle cannot carry");
      }
      EntryPtr entry = entryFromStat(name, st);
      if (containerIds) {
        archive_entry_set_uid(entry.get(), containerIds->toContainer(st.st_uid));
        archive_entry_set_gid(entry.get(), containerIds->toContainer(st.st_gid));
      }
      if (S_ISLNK(st.st_mode)) {
        std::vector<char> target(static_cast<size_t>(st.st_size) + 1);
        auto n = SYSCALL(::readlink(path.c_str(), target.data(), target.size()), "readlink", path.string());
        archive_entry_set_symlink(entry.get(), std::string(target.data(), static_cast<size_t>(n)).c_str());
        writeHeader(entry.get());
        return;
      }
      if (S_ISREG(st.st_mode) && st.st_nlink > 1) {
        auto [it, inserted] = firstLink.try_emplace({st.st_dev, st.st_ino}, name);
        if (!inserted) {
          archive_entry_set_size(entry.get(), 0);
          archive_entry_set_hardlink(entry.get(), it->second.c_str());
          writeHeader(entry.get());
          return;
        }
      }
      addXattrs(entry.get(), path, containerIds);
      writeHeader(entry.get());
      if (S_ISREG(st.st_mode)) {
        Fd fd = openOrFail(path, O_RDONLY | O_NOFOLLOW);
        copyData(fd.get(), static_cast<uint64_t>(st.st_size), path);
        figures.bytes += static_cast<uint64_t>(st.st_size);
      }
    });
    return figures;
  }

  // SHA-256 of every tar byte so far, the last entry's padding included.
  std::string tarDigest() {
    check(archive_write_finish_entry(archive_.get()), "finish entry");
    return tarHash_.hexDigest();
  }

  void close() {
    check(archive_write_close(archive_.get()), "close");
  }

 private:
  void check(int status, std::string_view what) {
    if (status == ARCHIVE_OK) return;
    archive_.rethrowStreamError();
    std::string text = "bundle: tar " + std::string(what) + ": " + archive_.errorText();
    if (status == ARCHIVE_WARN) {
      // E.g. a name that is not valid in the locale's charset: libarchive
      // then stores its bytes as they are (pax hdrcharset=BINARY), which is
      // what Linux names are anyway.
      logDebug(text);
      return;
    }
    fail(text);
  }

  EntryPtr newEntry(std::string_view name) {
    EntryPtr entry(archive_entry_new(), &archive_entry_free);
    if (!entry) throw std::bad_alloc();
    archive_entry_copy_pathname(entry.get(), std::string(name).c_str());
    return entry;
  }

  // Only what restore needs: no device/inode numbers, no user names (ids
  // are what the container's rootfs means).
  EntryPtr entryFromStat(std::string_view name, const struct stat& st) {
    EntryPtr entry = newEntry(name);
    archive_entry_set_filetype(entry.get(), st.st_mode & S_IFMT);
    archive_entry_set_perm(entry.get(), st.st_mode & 07777);
    archive_entry_set_uid(entry.get(), st.st_uid);
    archive_entry_set_gid(entry.get(), st.st_gid);
    archive_entry_set_size(entry.get(), S_ISREG(st.st_mode) ? st.st_size : 0);
    archive_entry_set_mtime(entry.get(), st.st_mtim.tv_sec, st.st_mtim.tv_nsec);
    return entry;
  }

  void addXattrs(archive_entry* entry, const fs::path& path, const std::optional<IdMapping>& containerIds) {
    auto size = SYSCALL(::llistxattr(path.c_str(), nullptr, 0), "llistxattr", path.string());
    if (size == 0) return;
    std::vector<char> names(static_cast<size_t>(size));
    size = SYSCALL(::llistxattr(path.c_str(), names.data(), names.size()), "llistxattr", path.string());
    for (size_t pos = 0; pos < static_cast<size_t>(size);) {
      std::string name(names.data() + pos);
      pos += name.size() + 1;
      if (isUncarriableOverlayXattr(name)) {
        fail(ErrorKind::Unimplemented, "bundle: `" + path.string() + "` has overlay xattr " + name +
                                           " (redirect_dir/metacopy), which a bundle cannot carry");
      }
      if (!isCarriedXattr(name)) continue;
      auto valueSize = SYSCALL(::lgetxattr(path.c_str(), name.c_str(), nullptr, 0), "lgetxattr", path.string(), name);
      std::vector<char> value(static_cast<size_t>(valueSize));
      valueSize = SYSCALL(::lgetxattr(path.c_str(), name.c_str(), value.data(), value.size()), "lgetxattr",
                          path.string(), name);
      value.resize(static_cast<size_t>(valueSize));
      if (name == kFileCapabilityXattr && containerIds) {
        shiftFileCapabilityRoot(value, [&](uint32_t id) -> std::optional<uint32_t> {
          if (id < containerIds->hostId || id >= containerIds->end()) return std::nullopt;
          return id - containerIds->hostId;
        });
      }
      archive_entry_xattr_add_entry(entry, name.c_str(), value.data(), value.size());
    }
  }

  void writeHeader(archive_entry* entry) { check(archive_write_header(archive_.get(), entry), "write header"); }

  void writeData(const void* data, size_t size) {
    auto n = archive_write_data(archive_.get(), data, size);
    if (n < 0 || static_cast<size_t>(n) != size) check(n < 0 ? static_cast<int>(n) : ARCHIVE_FATAL, "write data");
  }

  // Exactly `size` bytes, as announced in the header.
  void copyData(int fd, uint64_t size, const fs::path& path) {
    if (!buffer_) buffer_ = std::make_unique<char[]>(kChunkBytes);
    uint64_t done = 0;
    while (done < size) {
      size_t want = static_cast<size_t>(std::min<uint64_t>(kChunkBytes, size - done));
      auto n = static_cast<size_t>(SYSCALL(::read(fd, buffer_.get(), want), "read", path.string()));
      if (n == 0) fail("bundle: `" + path.string() + "` shrank while being written");
      writeData(buffer_.get(), n);
      done += n;
      bytesIn_ += n;
      if (onProgress_) onProgress_(bytesIn_);
    }
  }

  std::function<void(uint64_t)> onProgress_;
  Sha256 tarHash_;  // of every tar byte written, as it leaves (the signature's digest)
  TarOutputArchive archive_;
  std::unique_ptr<char[]> buffer_;
  uint64_t bytesIn_ = 0;
};

}  // namespace

RootfsDiffSize rootfsDiffSize(const fs::path& upperDir) {
  TreeFigures figures = figuresOf(upperDir, TreeKind::Upper);
  return RootfsDiffSize{figures.bytes, figures.entries};
}

std::string writeBundle(const BundleSources& sources, OutputStream& out,
                        std::function<void(uint64_t bytesIn)> onProgress) {
  BundleManifest manifest = sources.manifest;
  manifest.formatVersion = kBundleFormatVersion;
  TreeFigures checkpoint = figuresOf(sources.checkpointDir, TreeKind::Checkpoint);
  TreeFigures rootfsDiff = sources.upperDir ? figuresOf(*sources.upperDir, TreeKind::Upper) : TreeFigures{};
  manifest.checkpointBytes = checkpoint.bytes;
  manifest.checkpointEntries = checkpoint.entries;
  manifest.rootfsDiffBytes = rootfsDiff.bytes;
  manifest.rootfsDiffEntries = rootfsDiff.entries;
  if (!fs::exists(sources.checkpointDir / bundle::kInventory)) {
    fail(ErrorKind::NotFound, "bundle: " + sources.checkpointDir.string() + " has no " +
                                  std::string(bundle::kInventory) + ": not a complete CRIU dump");
  }

  BundleWriter writer(out, std::move(onProgress));
  writer.addBytes(bundle::kManifest, manifest.toJson().dump(2) + "\n");
  for (auto [name, path] : {std::pair{bundle::kConfigDump, &sources.configDump},
                            std::pair{bundle::kSpecDump, &sources.specDump}}) {
    if (!writer.addFile(name, *path)) fail(ErrorKind::NotFound, "bundle: " + path->string() + " does not exist");
  }
  if (sources.networkStatus) writer.addFile(bundle::kNetworkStatus, *sources.networkStatus);

  TreeFigures checkpointWritten = writer.addTree(bundle::kCheckpointDir, sources.checkpointDir, TreeKind::Checkpoint, nullptr);
  TreeFigures rootfsDiffWritten;
  if (sources.upperDir) {
    std::vector<std::string> deleted;
    rootfsDiffWritten = writer.addTree(bundle::kRootfsDiffDir, *sources.upperDir, TreeKind::Upper, &deleted,
                                       manifest.idMapping);
    writer.addBytes(bundle::kDeletedFiles, serializeDeletedFiles(deleted));
  }
  if (!(checkpointWritten == checkpoint) || !(rootfsDiffWritten == rootfsDiff)) {
    fail(ErrorKind::Conflict, "bundle: checkpoint or upper dir changed while the bundle was written");
  }
  if (sources.ctrLog) writer.addFile(bundle::kCtrLog, *sources.ctrLog, bundle::kMaxCtrLogBytes);
  if (sources.statsDump) writer.addFile(bundle::kStatsDump, *sources.statsDump);
  std::string digest = writer.tarDigest();
  if (sources.signer) writer.addBytes(bundle::kSignature, signBundle(*sources.signer, manifest, digest).text());
  writer.close();
  return digest;
}

}  // namespace migrate
