#include "agent/bundle-reader.h"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/xattr.h>

#include <cstring>
#include <memory>
#include <optional>
#include <set>
#include <vector>

#include "agent/bundle-signature.h"
#include "agent/rootfs-diff.h"
#include "agent/tar-stream.h"
#include "common/error.h"
#include "common/fd.h"
#include "common/relative-path.h"
#include "common/syscall.h"
#include "common/untrusted-json.h"

namespace migrate {

namespace {

constexpr size_t kReadBufferBytes = 1 << 20;
constexpr uint64_t kMaxManifestBytes = 1 << 20;
// Parsed whole (a JSON array of paths, ~25x its size in memory): 16 MiB is
// some 100,000 deletions, and at most ~400 MB while it is read.
constexpr uint64_t kMaxDeletedFilesBytes = 16ull << 20;
constexpr uint64_t kMaxSignatureBytes = 64 << 10;
// Our writer pads the tar to its 10 KiB record; anything much beyond that is not ours.
constexpr uint64_t kMaxTrailingBytes = 1 << 20;
// Entries outside the two trees (manifest.json, config.dump, ...): at most
// one each, beside the trees' entries BundleLimits::maxEntries counts.
constexpr size_t kMaxSideEntries = 16;
// Zero runs this long and aligned are left as holes instead of written.
constexpr size_t kHoleBlock = 4096;

// In stream order; the reader refuses an entry whose section comes before the previous one's.
enum class Section { Manifest, ConfigDump, SpecDump, NetworkStatus, Checkpoint, RootfsDiff, DeletedFiles, CtrLog, StatsDump, Signature };

struct SectionName {
  std::string_view name;
  Section section;
};

constexpr SectionName kSections[] = {
    {bundle::kManifest, Section::Manifest},         {bundle::kConfigDump, Section::ConfigDump},
    {bundle::kSpecDump, Section::SpecDump},         {bundle::kNetworkStatus, Section::NetworkStatus},
    {bundle::kCheckpointDir, Section::Checkpoint},  {bundle::kRootfsDiffDir, Section::RootfsDiff},
    {bundle::kDeletedFiles, Section::DeletedFiles}, {bundle::kCtrLog, Section::CtrLog},
    {bundle::kStatsDump, Section::StatsDump},       {bundle::kSignature, Section::Signature},
};

bool isTree(Section s) { return s == Section::Checkpoint || s == Section::RootfsDiff; }

std::string sectionOrder() {
  std::string order;
  for (auto& s : kSections) {
    if (!order.empty()) order += ", ";
    order += s.name;
  }
  return order;
}

// Hostile names go into error messages and logs: no control characters, bounded length.
std::string printable(std::string_view text) {
  std::string out;
  for (char c : text.substr(0, 200)) out += (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) ? '?' : c;
  if (text.size() > 200) out += "...";
  return out;
}

std::string topOf(const std::string& path) { return path.substr(0, path.find('/')); }

bool isAllZero(const char* p, size_t n) { return n == 0 || (p[0] == 0 && std::memcmp(p, p + 1, n - 1) == 0); }

void pwriteAll(int fd, const char* data, size_t size, uint64_t offset) {
  while (size > 0) {
    auto n = static_cast<size_t>(SYSCALL(::pwrite(fd, data, size, static_cast<off_t>(offset)), "pwrite"));
    data += n;
    size -= n;
    offset += n;
  }
}

class BundleReader {
 public:
  BundleReader(InputStream& in, const fs::path& dir, const BundleLimits& limits)
      : in_(in), dir_(dir), limits_(limits) {}
  BundleReader(const BundleReader&) = delete;
  BundleReader& operator=(const BundleReader&) = delete;

  const ReadSignature& signature() const { return signature_; }

  BundleManifest read(const std::function<void(const BundleManifest&)>& onManifest) {
    openTarget();
    openArchive();
    for (;;) {
      archive_entry* entry = nullptr;
      int status = archive_read_next_header(archive_->get(), &entry);
      if (status == ARCHIVE_EOF) break;
      checkRead(status);
      if (readEntry(entry)) acceptManifest(onManifest);
    }
    drainInput();
    applyDirectoryTimes();
    checkComplete();
    return manifest_;
  }

 private:
  void openTarget() {
    if (!fs::is_directory(dir_)) fail(ErrorKind::NotFound, "bundle: target " + dir_.string() + " is not a directory");
    // The caller's onManifest may then make checkpoint/ (a tmpfs sized from
    // the manifest); nothing else is there before the first entry.
    if (!fs::is_empty(dir_)) fail(ErrorKind::Conflict, "bundle: target " + dir_.string() + " is not empty");
    rootFd_ = Fd(SYSCALL(::open(dir_.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC), "open", dir_.string()));
  }

  void openArchive() {
    archive_.emplace(in_, kReadBufferBytes, [this](const void* data, size_t size) { tap_.add(static_cast<const char*>(data), size); });
    // Tar only, no filters: the less libarchive guesses, the less hostile
    // input can steer it.
    checkRead(archive_read_support_format_tar(archive_->get()));
    checkRead(archive_->open());
  }

  void checkRead(int status) {
    if (status == ARCHIVE_OK || status == ARCHIVE_WARN) return;
    archive_->rethrowStreamError();
    fail(ErrorKind::InvalidInput, "bundle: tar stream truncated or corrupt: " + archive_->errorText());
  }

  // Returns true for manifest.json, which the caller accepts outside this
  // entry's error context.
  bool readEntry(archive_entry* entry) {
    const char* rawPath = archive_entry_pathname(entry);
    std::string raw = rawPath ? rawPath : "";
    ErrorContext context("bundle: entry `" + printable(raw) + "`");
    if (++entries_ > limits_.maxEntries + kMaxSideEntries) {
      fail(ErrorKind::InvalidInput, "more than " + std::to_string(limits_.maxEntries) + " entries in the bundle");
    }
    std::string path = normaliseRelativePath(raw);
    std::string top = topOf(path);
    Section section = sectionOf(top);
    if (entries_ == 1 && section != Section::Manifest) fail(ErrorKind::InvalidInput, "manifest.json must be the first entry");
    if (entries_ > 1 && section == Section::Manifest) fail(ErrorKind::InvalidInput, "manifest.json must come only once, first");
    if (section == Section::Signature && seen_.count(section)) {
      fail(ErrorKind::InvalidInput, "signature.json must come only once, last");
    }
    if (section < lastSection_) fail(ErrorKind::InvalidInput, "out of order: bundle entries go " + sectionOrder());
    lastSection_ = section;

    const char* hardlink = archive_entry_hardlink(entry);
    auto type = archive_entry_filetype(entry);
    checkType(hardlink, type);
    la_int64_t size = archive_entry_size_is_set(entry) ? archive_entry_size(entry) : 0;
    checkSize(size, hardlink == nullptr && type == AE_IFREG);
    // Before anything of the entry is written: a tree's entries and bytes
    // stay within what the manifest declared, the rest within fixed caps.
    if (isTree(section)) {
      countTreeEntries(section, 1);
      countTreeBytes(section, static_cast<uint64_t>(size));
    } else if (section != Section::Manifest && section != Section::DeletedFiles) {
      uint64_t cap = section == Section::CtrLog ? bundle::kMaxCtrLogBytes : bundle::kMaxSideFileBytes;
      if (static_cast<uint64_t>(size) > cap) {
        fail(ErrorKind::InvalidInput, "size " + std::to_string(size) + " exceeds the limit of " + std::to_string(cap) +
                                          " bytes for " + top);
      }
    }
    seen_.insert(section);

    if (!isTree(section)) {
      if (path != top) fail(ErrorKind::InvalidInput, "unknown entry (only " + top + " itself is allowed)");
      if (hardlink || type != AE_IFREG) fail(ErrorKind::InvalidInput, "must be a regular file");
      switch (section) {
        case Section::Manifest:
          manifestText_ = readSmall(static_cast<uint64_t>(size), kMaxManifestBytes);
          writeSmallFile(path, manifestText_);
          return true;
        case Section::Signature:
          // Kept for checkBundleSignature, not written: it vouches for the
          // bytes before its header, the digest of which is taken here.
          signature_.tarSha256 = tap_.digestBefore(static_cast<uint64_t>(archive_read_header_position(archive_->get())));
          signature_.text = readSmall(static_cast<uint64_t>(size), kMaxSignatureBytes);
          return false;
        case Section::DeletedFiles: {
          // Each path is at most PATH_MAX, quoted, with a comma: no more text
          // than the whiteouts rootfsDiffEntries leaves room for.
          uint64_t room = manifest_.rootfsDiffEntries - std::min(rootfsDiffEntries_, manifest_.rootfsDiffEntries);
          uint64_t limit = std::min<uint64_t>(kMaxDeletedFilesBytes, 16 + room * (2 * 4096 + 3));
          std::string text = readSmall(static_cast<uint64_t>(size), limit,
                                       limit < kMaxDeletedFilesBytes ? " (all the room the manifest's rootfsDiffEntries leaves)" : "");
          writeSmallFile(path, text);
          createWhiteouts(text);
          return false;
        }
        default:
          extractRegular(path, entry, section, static_cast<uint64_t>(size));
          return false;
      }
    }
    if (path == top && (hardlink || type != AE_IFDIR)) fail(ErrorKind::InvalidInput, "must be a directory");
    if (hardlink) {
      extractHardlink(path, hardlink);
    } else if (type == AE_IFDIR) {
      extractDirectory(path, entry, section);
    } else if (type == AE_IFLNK) {
      extractSymlink(path, entry, section);
    } else {
      extractRegular(path, entry, section, static_cast<uint64_t>(size));
    }
    return false;
  }

  Section sectionOf(const std::string& top) {
    for (auto& s : kSections) {
      if (s.name == top) return s.section;
    }
    fail(ErrorKind::InvalidInput, "unknown top-level entry (expected one of " + sectionOrder() + ")");
  }

  void checkType(const char* hardlink, mode_t type) {
    if (hardlink) return;
    switch (type) {
      case AE_IFREG:
      case AE_IFDIR:
      case AE_IFLNK:
        return;
      case AE_IFCHR:
      case AE_IFBLK:
        fail(ErrorKind::InvalidInput, "device nodes are not allowed in a bundle");
      case AE_IFIFO:
        fail(ErrorKind::InvalidInput, "fifos are not allowed in a bundle");
      case AE_IFSOCK:
        fail(ErrorKind::InvalidInput, "sockets are not allowed in a bundle");
      default:
        fail(ErrorKind::InvalidInput, "unsupported entry type");
    }
  }

  void checkSize(la_int64_t size, bool regular) {
    if (size < 0) fail(ErrorKind::InvalidInput, "negative size");
    if (size > 0 && !regular) fail(ErrorKind::InvalidInput, "only regular files may carry data");
    auto bytes = static_cast<uint64_t>(size);
    if (bytes > limits_.maxEntryBytes) {
      fail(ErrorKind::InvalidInput, "size " + std::to_string(bytes) + " exceeds the limit of " +
                                        std::to_string(limits_.maxEntryBytes) + " bytes per entry");
    }
    totalBytes_ += bytes;
    if (totalBytes_ > limits_.maxTotalBytes) {
      fail(ErrorKind::InvalidInput, "the bundle exceeds its limit of " + std::to_string(limits_.maxTotalBytes) + " bytes");
    }
  }

  // The manifest's figure for a tree, by name, for messages.
  struct Declared {
    const char* name;
    uint64_t value;
  };
  Declared declaredEntries(Section section) const {
    return section == Section::Checkpoint ? Declared{"checkpointEntries", manifest_.checkpointEntries}
                                          : Declared{"rootfsDiffEntries", manifest_.rootfsDiffEntries};
  }
  Declared declaredBytes(Section section) const {
    return section == Section::Checkpoint ? Declared{"checkpointBytes", manifest_.checkpointBytes}
                                          : Declared{"rootfsDiffBytes", manifest_.rootfsDiffBytes};
  }
  uint64_t& entriesOf(Section section) { return section == Section::Checkpoint ? checkpointEntries_ : rootfsDiffEntries_; }
  uint64_t& bytesOf(Section section) { return section == Section::Checkpoint ? checkpointBytes_ : rootfsDiffBytes_; }
  std::string treeName(Section section) const {
    return std::string(section == Section::Checkpoint ? bundle::kCheckpointDir : bundle::kRootfsDiffDir) + "/";
  }

  void countTreeEntries(Section section, uint64_t more) {
    uint64_t& got = entriesOf(section);
    Declared want = declaredEntries(section);
    if (more > want.value - std::min(got, want.value)) {
      fail(ErrorKind::InvalidInput, treeName(section) + " has more entries than the manifest's " + want.name + " (" +
                                        std::to_string(want.value) + ")");
    }
    got += more;
  }

  // Hardlinks carry no data (size 0), so each inode's bytes count once.
  void countTreeBytes(Section section, uint64_t more) {
    uint64_t& got = bytesOf(section);
    Declared want = declaredBytes(section);
    if (more > want.value - std::min(got, want.value)) {
      fail(ErrorKind::InvalidInput, treeName(section) + " would hold more than the manifest's " + want.name + " (" +
                                        std::to_string(want.value) + " bytes): this entry has " +
                                        std::to_string(more) + " after " + std::to_string(got));
    }
    got += more;
  }

  // --- extraction: every path is opened beneath rootFd_ refusing symlinks,
  // and the last component is acted on with a single-name *at() call that
  // never follows it.

  void extractRegular(const std::string& path, archive_entry* entry, Section section, uint64_t size) {
    auto [parent, base] = splitParent(path);
    Fd parentFd = openDirectoryBeneath(rootFd_.get(), parent, true);
    int raw = ::openat(parentFd.get(), base.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (raw < 0) failCreate(errno, path);
    Fd fd(raw);
    copyData(fd.get(), size);
    applyOwnerModeXattrs(fd.get(), entry, AE_IFREG, section);
    struct timespec times[2] = {{0, UTIME_OMIT}, mtimeOf(entry)};
    SYSCALL(::futimens(fd.get(), times), "futimens", path);
    if (path == std::string(bundle::kCheckpointDir) + "/" + std::string(bundle::kInventory)) sawInventory_ = true;
  }

  void extractDirectory(const std::string& path, archive_entry* entry, Section section) {
    auto [parent, base] = splitParent(path);
    Fd parentFd = openDirectoryBeneath(rootFd_.get(), parent, true);
    if (::mkdirat(parentFd.get(), base.c_str(), 0700) < 0) {
      // Already made as the parent of an earlier entry: fine, if it is a directory.
      struct stat st;
      if (errno != EEXIST) failErrno(errno, "mkdir " + path);
      SYSCALL(::fstatat(parentFd.get(), base.c_str(), &st, AT_SYMLINK_NOFOLLOW), "fstatat", path);
      if (!S_ISDIR(st.st_mode)) fail(ErrorKind::InvalidInput, "duplicate entry");
    }
    Fd fd(SYSCALL(::openat(parentFd.get(), base.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC), "open",
                  path));
    applyOwnerModeXattrs(fd.get(), entry, AE_IFDIR, section);
    // Creating the children changes the mtime; set it once they exist.
    directoryTimes_.emplace_back(path, mtimeOf(entry));
  }

  void extractSymlink(const std::string& path, archive_entry* entry, Section section) {
    const char* rawTarget = archive_entry_symlink(entry);
    std::string target = rawTarget ? rawTarget : "";
    if (target.empty()) fail(ErrorKind::InvalidInput, "symlink without a target");
    if (target.size() >= 4096) fail(ErrorKind::InvalidInput, "symlink target longer than 4095 bytes");
    // rootfs-diff/ symlinks are resolved inside the container's rootfs later,
    // so they may point anywhere; elsewhere they must stay in their tree.
    if (section != Section::RootfsDiff) checkSymlinkConfined(path, target);
    auto [parent, base] = splitParent(path);
    Fd parentFd = openDirectoryBeneath(rootFd_.get(), parent, true);
    if (::symlinkat(target.c_str(), parentFd.get(), base.c_str()) < 0) failCreate(errno, path);
    auto [uid, gid] = ownerOf(entry, section);
    SYSCALL(::fchownat(parentFd.get(), base.c_str(), uid, gid, AT_SYMLINK_NOFOLLOW), "lchown", path);
    struct timespec times[2] = {{0, UTIME_OMIT}, mtimeOf(entry)};
    SYSCALL(::utimensat(parentFd.get(), base.c_str(), times, AT_SYMLINK_NOFOLLOW), "utimensat", path);
  }

  void checkSymlinkConfined(const std::string& path, const std::string& target) {
    std::string top = topOf(path);
    std::string shown = printable(target);
    if (target.front() == '/') fail(ErrorKind::InvalidInput, "symlink target `" + shown + "` leaves " + top + "/");
    auto [parent, base] = splitParent(path);
    std::vector<std::string> stack;
    auto push = [&](const std::string& text) {
      size_t pos = 0;
      while (pos <= text.size()) {
        size_t end = text.find('/', pos);
        if (end == std::string::npos) end = text.size();
        std::string component = text.substr(pos, end - pos);
        pos = end + 1;
        if (component.empty() || component == ".") continue;
        if (component == "..") {
          if (stack.size() <= 1) fail(ErrorKind::InvalidInput, "symlink target `" + shown + "` leaves " + top + "/");
          stack.pop_back();
        } else {
          stack.push_back(component);
        }
      }
    };
    push(parent);
    push(target);
  }

  void extractHardlink(const std::string& path, const char* rawTarget) {
    std::string target, problem;
    if (!tryNormaliseRelativePath(rawTarget, target, problem)) {
      fail(ErrorKind::InvalidInput, "hardlink target `" + printable(rawTarget) + "`: " + problem);
    }
    std::string top = topOf(path);
    if (topOf(target) != top || target == top) {
      fail(ErrorKind::InvalidInput, "hardlink target `" + printable(target) + "` is outside " + top + "/");
    }
    auto [targetParent, targetBase] = splitParent(target);
    Fd targetParentFd = openDirectoryBeneath(rootFd_.get(), targetParent, false);
    struct stat st;
    if (::fstatat(targetParentFd.get(), targetBase.c_str(), &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISREG(st.st_mode)) {
      fail(ErrorKind::InvalidInput, "hardlink target `" + printable(target) + "` is not an earlier regular file");
    }
    auto [parent, base] = splitParent(path);
    Fd parentFd = openDirectoryBeneath(rootFd_.get(), parent, true);
    // No AT_SYMLINK_FOLLOW: links the name we just checked, not what it points to.
    if (::linkat(targetParentFd.get(), targetBase.c_str(), parentFd.get(), base.c_str(), 0) < 0) {
      failCreate(errno, path);
    }
  }

  [[noreturn]] void failCreate(int err, const std::string& path) {
    if (err == EEXIST) fail(ErrorKind::InvalidInput, "duplicate entry");
    failErrno(err, "create " + path);
  }

  // rootfs-diff/ of a container in a user namespace carries its own ids:
  // each must be one of its `size`, and lands as the mapping's host id.
  std::pair<uid_t, gid_t> ownerOf(archive_entry* entry, Section section) {
    la_int64_t uid = archive_entry_uid(entry);
    la_int64_t gid = archive_entry_gid(entry);
    // (uid_t)-1 means "leave unchanged" to chown.
    if (uid < 0 || uid >= UINT32_MAX || gid < 0 || gid >= UINT32_MAX) {
      fail(ErrorKind::InvalidInput, "owner " + std::to_string(uid) + ":" + std::to_string(gid) + " out of range");
    }
    if (section != Section::RootfsDiff || !manifest_.idMapping) return {static_cast<uid_t>(uid), static_cast<gid_t>(gid)};
    auto hostUid = manifest_.idMapping->toHost(static_cast<uint32_t>(uid));
    auto hostGid = manifest_.idMapping->toHost(static_cast<uint32_t>(gid));
    if (!hostUid || !hostGid) {
      fail(ErrorKind::InvalidInput, "owner " + std::to_string(uid) + ":" + std::to_string(gid) + " is outside the container's " +
                                        std::to_string(manifest_.idMapping->size) + " ids");
    }
    return {*hostUid, *hostGid};
  }

  static struct timespec mtimeOf(archive_entry* entry) {
    if (!archive_entry_mtime_is_set(entry)) return {0, UTIME_OMIT};
    long nsec = archive_entry_mtime_nsec(entry);
    if (nsec < 0 || nsec >= 1'000'000'000) nsec = 0;
    return {static_cast<time_t>(archive_entry_mtime(entry)), nsec};
  }

  // chown before chmod and xattrs: chown clears setuid bits and security.capability.
  void applyOwnerModeXattrs(int fd, archive_entry* entry, mode_t type, Section section) {
    auto [uid, gid] = ownerOf(entry, section);
    SYSCALL(::fchown(fd, uid, gid), "fchown");
    // Only the container's own files may be setuid/setgid or carry
    // capabilities; the rest of the bundle is data for the agent.
    mode_t permMask = section == Section::RootfsDiff ? 07777 : 0777;
    SYSCALL(::fchmod(fd, archive_entry_perm(entry) & permMask), "fchmod");
    const char* name;
    const void* value;
    size_t size;
    archive_entry_xattr_reset(entry);
    while (archive_entry_xattr_next(entry, &name, &value, &size) == ARCHIVE_OK) {
      std::string_view n(name);
      if (!isCarriedXattr(n)) continue;
      if (section != Section::RootfsDiff && !n.starts_with("user.")) continue;
      if (n == kOverlayOpaqueXattr && (section != Section::RootfsDiff || type != AE_IFDIR)) continue;
      if (n == kFileCapabilityXattr && type != AE_IFREG) continue;
      if (n == kFileCapabilityXattr && section == Section::RootfsDiff && manifest_.idMapping) {
        std::vector<char> shifted(static_cast<const char*>(value), static_cast<const char*>(value) + size);
        shiftFileCapabilityRoot(shifted, [&](uint32_t id) { return manifest_.idMapping->toHost(id); });
        SYSCALL(::fsetxattr(fd, name, shifted.data(), shifted.size(), 0), "fsetxattr", printable(n));
        continue;
      }
      SYSCALL(::fsetxattr(fd, name, value, size, 0), "fsetxattr", printable(n));
    }
  }

  // Calls `take(data, length, offset)` for each data block of the current
  // entry, refusing any block that reaches past the entry's declared size.
  template <typename Take>
  void forEachDataBlock(uint64_t size, Take take) {
    for (;;) {
      const void* block;
      size_t length;
      la_int64_t offset;
      int status = archive_read_data_block(archive_->get(), &block, &length, &offset);
      if (status == ARCHIVE_EOF) break;
      checkRead(status);
      if (offset < 0 || static_cast<uint64_t>(offset) + length > size) {
        fail(ErrorKind::InvalidInput, "data beyond the entry's size");
      }
      take(static_cast<const char*>(block), length, static_cast<uint64_t>(offset));
    }
  }

  void copyData(int fd, uint64_t size) {
    forEachDataBlock(size, [&](const char* data, size_t length, uint64_t offset) {
      writeSkippingZeros(fd, data, length, offset);
    });
    // Extends over trailing holes; the file was created empty, so every
    // range not written reads as zeros.
    SYSCALL(::ftruncate(fd, static_cast<off_t>(size)), "ftruncate");
  }

  // Leaves aligned all-zero blocks unwritten, so sparse files (and the
  // zero-filled stretches of CRIU page images) stay sparse on the target.
  void writeSkippingZeros(int fd, const char* data, size_t length, uint64_t offset) {
    size_t runStart = 0;
    size_t pos = 0;
    while (pos < length) {
      size_t blockEnd = std::min(length, pos + (kHoleBlock - (offset + pos) % kHoleBlock));
      if (blockEnd - pos == kHoleBlock && isAllZero(data + pos, kHoleBlock)) {
        if (pos > runStart) pwriteAll(fd, data + runStart, pos - runStart, offset + runStart);
        runStart = blockEnd;
      }
      pos = blockEnd;
    }
    if (length > runStart) pwriteAll(fd, data + runStart, length - runStart, offset + runStart);
  }

  std::string readSmall(uint64_t size, uint64_t limit, std::string_view why = {}) {
    if (size > limit) fail(ErrorKind::InvalidInput, "larger than " + std::to_string(limit) + " bytes" + std::string(why));
    std::string text(static_cast<size_t>(size), '\0');
    forEachDataBlock(size, [&](const char* data, size_t length, uint64_t offset) {
      std::memcpy(text.data() + offset, data, length);
    });
    return text;
  }

  void writeSmallFile(const std::string& name, const std::string& text) {
    int raw = ::openat(rootFd_.get(), name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (raw < 0) failCreate(errno, name);
    Fd fd(raw);
    pwriteAll(fd.get(), text.data(), text.size(), 0);
  }

  void createWhiteouts(const std::string& text) {
    std::vector<std::string> paths = parseDeletedFiles(text);
    if (entries_ + paths.size() > limits_.maxEntries + kMaxSideEntries) {
      fail(ErrorKind::InvalidInput, "more than " + std::to_string(limits_.maxEntries) + " entries in the bundle");
    }
    entries_ += paths.size();
    countTreeEntries(Section::RootfsDiff, paths.size());
    if (paths.empty()) return;
    Fd upper = openDirectoryBeneath(rootFd_.get(), bundle::kRootfsDiffDir, true);
    for (auto& path : paths) createWhiteout(upper.get(), path);
  }

  void acceptManifest(const std::function<void(const BundleManifest&)>& onManifest) {
    nlohmann::json json = parseUntrustedJson(manifestText_, "bundle: manifest.json");
    if (!json.is_object()) fail(ErrorKind::InvalidInput, "bundle: manifest.json is not a JSON object");
    auto version = json.find("formatVersion");
    if (version == json.end() || !version->is_number_integer()) {
      fail(ErrorKind::InvalidInput, "bundle: manifest.json has no integer formatVersion");
    }
    if (*version != kBundleFormatVersion) {
      fail(ErrorKind::Unimplemented, "bundle: format version " + version->dump() + " is not supported (this build reads " +
                                         std::to_string(kBundleFormatVersion) + ")");
    }
    manifest_ = BundleManifest::fromJson(json);
    checkDeclaredWithinLimits();
    if (onManifest) onManifest(manifest_);
  }

  // What the manifest declares is what the reader lets in; first it must be
  // within this host's policy.
  void checkDeclaredWithinLimits() {
    auto sum = [](uint64_t a, uint64_t b) { return a > UINT64_MAX - b ? UINT64_MAX : a + b; };
    uint64_t bytes = sum(manifest_.checkpointBytes, manifest_.rootfsDiffBytes);
    if (bytes > limits_.maxTotalBytes) {
      fail(ErrorKind::InvalidInput, "bundle: manifest.json declares checkpointBytes + rootfsDiffBytes = " +
                                        std::to_string(bytes) + ", over this host's limit of " +
                                        std::to_string(limits_.maxTotalBytes) + " bytes per bundle");
    }
    uint64_t entries = sum(manifest_.checkpointEntries, manifest_.rootfsDiffEntries);
    if (entries > limits_.maxEntries) {
      fail(ErrorKind::InvalidInput, "bundle: manifest.json declares checkpointEntries + rootfsDiffEntries = " +
                                        std::to_string(entries) + ", over this host's limit of " +
                                        std::to_string(limits_.maxEntries) + " entries per bundle");
    }
  }

  void drainInput() {
    uint64_t trailing = 0;
    std::vector<char> buffer(kReadBufferBytes);
    for (;;) {
      size_t n = in_.read(buffer.data(), buffer.size());
      if (n == 0) return;
      trailing += n;
      if (trailing > kMaxTrailingBytes) fail(ErrorKind::InvalidInput, "bundle: unexpected data after the end of the tar stream");
    }
  }

  void applyDirectoryTimes() {
    for (auto& [path, mtime] : directoryTimes_) {
      auto [parent, base] = splitParent(path);
      Fd parentFd = openDirectoryBeneath(rootFd_.get(), parent, false);
      struct timespec times[2] = {{0, UTIME_OMIT}, mtime};
      SYSCALL(::utimensat(parentFd.get(), base.c_str(), times, AT_SYMLINK_NOFOLLOW), "utimensat", path);
    }
  }

  void checkComplete() {
    if (entries_ == 0) fail(ErrorKind::InvalidInput, "bundle: empty tar stream, no manifest.json");
    for (auto [section, name] : {std::pair{Section::ConfigDump, bundle::kConfigDump},
                                 std::pair{Section::SpecDump, bundle::kSpecDump}}) {
      if (!seen_.count(section)) fail(ErrorKind::InvalidInput, "bundle: `" + std::string(name) + "` is missing");
    }
    if (!sawInventory_) {
      fail(ErrorKind::InvalidInput, "bundle: `" + std::string(bundle::kCheckpointDir) + "/" +
                                        std::string(bundle::kInventory) + "` is missing");
    }
    // Tar cannot tell a stream cut at an entry boundary from a whole one; the
    // manifest's byte counts can.
    auto checkBytes = [](std::string_view tree, uint64_t got, uint64_t want) {
      if (got != want) {
        fail(ErrorKind::InvalidInput, "bundle: " + std::string(tree) + "/ holds " + std::to_string(got) +
                                          " bytes but the manifest says " + std::to_string(want) + " (truncated?)");
      }
    };
    checkBytes(bundle::kCheckpointDir, checkpointBytes_, manifest_.checkpointBytes);
    checkBytes(bundle::kRootfsDiffDir, rootfsDiffBytes_, manifest_.rootfsDiffBytes);
    for (Section section : {Section::Checkpoint, Section::RootfsDiff}) {
      Declared want = declaredEntries(section);
      if (entriesOf(section) != want.value) {
        fail(ErrorKind::InvalidInput, "bundle: " + treeName(section) + " has " + std::to_string(entriesOf(section)) +
                                          " entries but the manifest's " + want.name + " is " +
                                          std::to_string(want.value) + " (truncated?)");
      }
    }
  }

  InputStream& in_;
  fs::path dir_;
  BundleLimits limits_;
  std::optional<TarInputArchive> archive_;  // from openArchive(), after the target is checked
  Fd rootFd_;

  size_t entries_ = 0;
  uint64_t totalBytes_ = 0;
  Section lastSection_ = Section::Manifest;
  std::set<Section> seen_;
  std::string manifestText_;
  BundleManifest manifest_;
  bool sawInventory_ = false;
  // Counted at each entry's header, against the manifest's figures.
  uint64_t checkpointBytes_ = 0;
  uint64_t rootfsDiffBytes_ = 0;
  uint64_t checkpointEntries_ = 0;
  uint64_t rootfsDiffEntries_ = 0;
  std::vector<std::pair<std::string, struct timespec>> directoryTimes_;
  TarDigestTap tap_;
  ReadSignature signature_;
};

}  // namespace

BundleManifest readBundle(InputStream& in, const fs::path& dir, const BundleLimits& limits,
                          std::function<void(const BundleManifest&)> onManifest, ReadSignature* signature) {
  BundleReader reader(in, dir, limits);
  BundleManifest manifest = reader.read(onManifest);
  if (signature) *signature = reader.signature();
  return manifest;
}

}  // namespace migrate
