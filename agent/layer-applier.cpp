#include "agent/layer-applier.h"

#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <set>
#include <vector>

#include "common/error.h"
#include "common/fd.h"
#include "common/files.h"
#include "common/log.h"
#include "common/relative-path.h"
#include "common/syscall.h"

namespace migrate {

TarReader::TarReader(InputStream& in) : archive_(in, 1 << 16) {
  archive_read_support_filter_all(get());
  archive_read_support_format_tar(get());
  if (archive_.open() != ARCHIVE_OK) rethrowOrFail("not a tar archive");
}

archive_entry* TarReader::next() {
  archive_entry* entry = nullptr;
  int r = archive_read_next_header(get(), &entry);
  if (r == ARCHIVE_EOF) return nullptr;
  if (r == ARCHIVE_WARN) logWarn("tar: " + archive_.errorText());
  if (r < ARCHIVE_WARN) rethrowOrFail("corrupt tar archive");
  return entry;
}

std::string TarReader::readData(uint64_t max) {
  std::string out;
  char buf[65536];
  for (;;) {
    auto n = archive_read_data(get(), buf, sizeof buf);
    if (n < 0) rethrowOrFail("corrupt tar archive");
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
    if (out.size() > max) fail(ErrorKind::InvalidInput, "entry larger than " + std::to_string(max) + " bytes");
  }
  return out;
}

void TarReader::rethrowOrFail(const std::string& what) {
  archive_.rethrowStreamError();
  fail(ErrorKind::InvalidInput, what + " (" + archive_.errorText() + ")");
}

namespace {

// Filesystem operations that never follow a symlink: the tree being built is
// attacker-shaped, and a whiteout like `lnk/.wh.etc` after `lnk -> /` must not
// reach the host.

std::vector<std::string> listDir(int dirFd) {
  std::vector<std::string> names;
  DIR* dir = ::fdopendir(SYSCALL(::dup(dirFd), "dup"));
  if (!dir) failErrno(errno, "opendir");
  while (auto* ent = ::readdir(dir)) {
    if (std::strcmp(ent->d_name, ".") != 0 && std::strcmp(ent->d_name, "..") != 0) names.push_back(ent->d_name);
  }
  ::closedir(dir);
  return names;
}

// Removes `name` in `dirFd` and, for a directory, everything beneath it.
void removeAt(int dirFd, const std::string& name) {
  struct stat st;
  if (::fstatat(dirFd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
    if (errno == ENOENT) return;
    failErrno(errno, "stat `" + name + "`");
  }
  if (S_ISDIR(st.st_mode)) {
    Fd child(SYSCALL(::openat(dirFd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC), "open", name));
    for (auto& n : listDir(child.get())) removeAt(child.get(), n);
    SYSCALL(::unlinkat(dirFd, name.c_str(), AT_REMOVEDIR), "rmdir", name);
  } else {
    SYSCALL(::unlinkat(dirFd, name.c_str(), 0), "unlink", name);
  }
}

// How libarchive's disk writer is allowed to touch the tree. Paths handed to
// it are absolute (see LayerApplier), so ARCHIVE_EXTRACT_SECURE_NOABSOLUTEPATHS
// cannot be used; LayerApplier refuses absolute and `..` names itself. No
// FFLAGS: an immutable file would make the image impossible to delete.
int diskWriterFlags() {
  int flags = ARCHIVE_EXTRACT_SECURE_SYMLINKS | ARCHIVE_EXTRACT_SECURE_NODOTDOT | ARCHIVE_EXTRACT_UNLINK |
              ARCHIVE_EXTRACT_PERM | ARCHIVE_EXTRACT_TIME | ARCHIVE_EXTRACT_XATTR;
  // Numeric ids as in the archive (no name lookup: host names mean nothing to the image).
  if (::geteuid() == 0) flags |= ARCHIVE_EXTRACT_OWNER;
  return flags;
}

class DiskWriter {
 public:
  DiskWriter() { open(); }
  ~DiskWriter() { archive_write_free(a_); }
  DiskWriter(const DiskWriter&) = delete;
  DiskWriter& operator=(const DiskWriter&) = delete;

  archive* get() { return a_; }

  // libarchive defers directory permissions and times to close and applies
  // them by path name. Closing before we remove anything means no deferred
  // fix-up can ever be applied through a path whose meaning we changed.
  void flush() {
    close();
    archive_write_free(a_);
    open();
  }

  void close() {
    int r = archive_write_close(a_);
    if (r == ARCHIVE_WARN) logWarn("image extraction: " + archiveErrorText(a_));
    if (r < ARCHIVE_WARN) fail("finishing extraction: " + archiveErrorText(a_));
  }

 private:
  void open() {
    a_ = archive_write_disk_new();
    if (!a_) fail(ErrorKind::Overloaded, "libarchive: out of memory");
    archive_write_disk_set_options(a_, diskWriterFlags());
  }

  archive* a_ = nullptr;
};

// Keeps only extended attributes that are safe to carry into a lower layer:
// trusted.overlay.* would steer overlayfs (opaque, redirect, metacopy), and
// security.selinux is the runtime's to set.
void sanitizeXattrs(archive_entry* entry) {
  struct Xattr {
    std::string name;
    std::string value;
  };
  std::vector<Xattr> keep;
  bool dropped = false;
  archive_entry_xattr_reset(entry);
  const char* name;
  const void* value;
  size_t size;
  while (archive_entry_xattr_next(entry, &name, &value, &size) == ARCHIVE_OK) {
    std::string_view n(name);
    if (n.starts_with("user.") || n == "security.capability") {
      keep.push_back({std::string(n), std::string(static_cast<const char*>(value), size)});
    } else {
      dropped = true;
    }
  }
  if (!dropped) return;
  archive_entry_xattr_clear(entry);
  for (auto& x : keep) archive_entry_xattr_add_entry(entry, x.name.c_str(), x.value.data(), x.value.size());
}

// Extracts tar entries into one rootfs directory. Every name is cleaned and
// checked here; libarchive then gets an absolute path and its own symlink
// checks as a second line.
class LayerApplier {
 public:
  LayerApplier(const fs::path& rootfs, Whiteouts whiteouts)
      : rootfs_(rootfs.string()),
        rootFd_(openOrFail(rootfs, O_RDONLY | O_DIRECTORY)),
        whiteouts_(whiteouts) {}

  // Applies every remaining entry of `reader`. With a `prefix`, entries must
  // lie beneath it ("rootfs") and are re-rooted; other entries are refused.
  void apply(TarReader& reader, const std::string& prefix = {}) {
    while (archive_entry* entry = reader.next()) applyEntry(reader, entry, prefix);
    writer_.close();
  }

 private:
  void applyEntry(TarReader& reader, archive_entry* entry, const std::string& prefix) {
    const char* rawName = archive_entry_pathname(entry);
    if (!rawName) fail(ErrorKind::InvalidInput, "entry with an unreadable name: refused");
    ErrorContext ctx(std::string("entry `") + rawName + "`");
    auto path = relativePath(rawName, prefix);

    if (whiteouts_ == Whiteouts::Apply) {
      auto [parent, base] = splitParent(path);
      if (base == ".wh..wh..opq") return makeOpaque(parent);
      if (base.starts_with(".wh.")) return whiteout(parent, base.substr(4));
    }
    // The root's own entry would set the rootfs directory's owner and mode;
    // the store keeps those under its control.
    if (path.empty()) return;

    const char* hardlink = archive_entry_hardlink(entry);
    auto type = archive_entry_filetype(entry);
    if (!hardlink) {
      switch (type) {
        case AE_IFREG:
        case AE_IFDIR:
        case AE_IFLNK:
        case AE_IFIFO:
          break;
        case AE_IFCHR:
        case AE_IFBLK:
        case AE_IFSOCK:
          // runc provides /dev; a device node in an image is a way to reach host hardware.
          logWarn("image extraction: skipping special file `" + path + "`");
          return;
        default:
          fail(ErrorKind::InvalidInput, "refused (unknown file type)");
      }
    }
    bool isDir = !hardlink && type == AE_IFDIR;
    prepareTarget(path, isDir);
    if (hardlink) {
      auto target = relativePath(hardlink, prefix);
      checkHardlinkTarget(target);
      archive_entry_set_hardlink(entry, (rootfs_ + "/" + target).c_str());
    }
    archive_entry_set_pathname(entry, (rootfs_ + "/" + path).c_str());
    sanitizeXattrs(entry);

    int r = archive_write_header(writer_.get(), entry);
    if (r == ARCHIVE_WARN) logWarn("image extraction: `" + path + "`: " + archiveErrorText(writer_.get()));
    if (r < ARCHIVE_WARN) fail(ErrorKind::InvalidInput, "refused (" + archiveErrorText(writer_.get()) + ")");
    if (archive_entry_size(entry) > 0) copyData(reader);
    r = archive_write_finish_entry(writer_.get());
    if (r < ARCHIVE_WARN) fail("write: " + archiveErrorText(writer_.get()));
    noteWritten(path);
  }

  std::string relativePath(const char* raw, const std::string& prefix) {
    std::string path, problem;
    if (!tryNormaliseRelativePath(raw, path, problem, RootPath::Accept)) fail(ErrorKind::InvalidInput, "refused (" + problem + ")");
    if (prefix.empty()) return path;
    if (path == prefix) return {};
    if (!path.starts_with(prefix + "/")) fail(ErrorKind::InvalidInput, "refused (not under " + prefix + "/)");
    return path.substr(prefix.size() + 1);
  }

  Fd openParent(const std::string& parent, bool missingOk) {
    int err = 0;
    Fd fd = tryOpenBeneath(rootFd_.get(), parent, O_RDONLY | O_DIRECTORY, Symlinks::Refuse, err);
    if (fd || (missingOk && err == ENOENT)) return fd;
    if (err == ELOOP || err == EXDEV) fail(ErrorKind::InvalidInput, "refused (path goes through a symlink)");
    if (err == ENOTDIR) fail(ErrorKind::InvalidInput, "refused (a parent is not a directory)");
    failErrno(err, "open `" + parent + "`");
  }

  // A later layer may put a file where a directory was, or the reverse;
  // libarchive only replaces like with like.
  void prepareTarget(const std::string& path, bool isDir) {
    auto [parent, base] = splitParent(path);
    Fd parentFd = openParent(parent, /*missingOk=*/true);
    if (!parentFd) return;
    struct stat st;
    if (::fstatat(parentFd.get(), base.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) return;
    if (S_ISDIR(st.st_mode) == isDir) return;
    writer_.flush();
    removeAt(parentFd.get(), base);
  }

  void checkHardlinkTarget(const std::string& target) {
    if (target.empty()) fail(ErrorKind::InvalidInput, "refused (hard link to the root)");
    auto [parent, base] = splitParent(target);
    Fd parentFd = openParent(parent, /*missingOk=*/false);
    struct stat st;
    if (::fstatat(parentFd.get(), base.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
      failErrno(errno, "hard link target `" + target + "`");
    }
    if (S_ISDIR(st.st_mode)) fail(ErrorKind::InvalidInput, "refused (hard link to a directory)");
  }

  void copyData(TarReader& reader) {
    const void* buf;
    size_t size;
    la_int64_t offset;
    for (;;) {
      int r = archive_read_data_block(reader.get(), &buf, &size, &offset);
      if (r == ARCHIVE_EOF) return;
      if (r < ARCHIVE_WARN) reader.rethrowOrFail("corrupt tar archive");
      if (archive_write_data_block(writer_.get(), buf, size, offset) < ARCHIVE_WARN) {
        fail("write: " + archiveErrorText(writer_.get()));
      }
    }
  }

  void whiteout(const std::string& parent, const std::string& name) {
    if (name.empty() || name == "." || name == "..") fail(ErrorKind::InvalidInput, "refused (malformed whiteout)");
    Fd parentFd = openParent(parent, /*missingOk=*/true);
    if (!parentFd) return;
    writer_.flush();
    removeAt(parentFd.get(), name);
  }

  // An opaque directory hides everything the lower layers put in it; what this
  // layer wrote there (before or after the marker) stays.
  void makeOpaque(const std::string& dir) {
    Fd dirFd = openParent(dir, /*missingOk=*/true);
    if (!dirFd) return;
    writer_.flush();
    clearLower(dirFd.get(), dir);
  }

  void clearLower(int dirFd, const std::string& dir) {
    for (auto& name : listDir(dirFd)) {
      auto path = joinPath(dir, name);
      bool fromThisLayer = written_.count(path) > 0;
      bool holdsThisLayer = ancestors_.count(path) > 0;
      if (!fromThisLayer && !holdsThisLayer) {
        removeAt(dirFd, name);
        continue;
      }
      struct stat st;
      if (::fstatat(dirFd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode)) {
        Fd child(SYSCALL(::openat(dirFd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC), "open", path));
        clearLower(child.get(), path);
      }
    }
  }

  void noteWritten(const std::string& path) {
    if (whiteouts_ != Whiteouts::Apply) return;
    written_.insert(path);
    for (auto parent = splitParent(path).first; !parent.empty(); parent = splitParent(parent).first) {
      if (!ancestors_.insert(parent).second) break;
    }
  }

  std::string rootfs_;
  Fd rootFd_;
  Whiteouts whiteouts_;
  DiskWriter writer_;
  std::set<std::string> written_;    // entries of this layer, for opaque directories
  std::set<std::string> ancestors_;  // their parent directories
};

}  // namespace

void applyLayer(TarReader& reader, const fs::path& rootfs, Whiteouts whiteouts, const std::string& prefix) {
  LayerApplier(rootfs, whiteouts).apply(reader, prefix);
}

}  // namespace migrate
