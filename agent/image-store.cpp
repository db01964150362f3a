#include "agent/image-store.h"

#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <ctime>
#include <exception>
#include <memory>
#include <set>

#include "agent/identifiers.h"
#include "common/error.h"
#include "common/fd.h"
#include "common/files.h"
#include "common/log.h"
#include "common/syscall.h"
#include "common/syscalls.h"

namespace migrate {

namespace {

// Manifests, configs and indexes are small; a bigger one is hostile.
constexpr uint64_t kMaxJsonBlob = 4u << 20;
constexpr const char* kRefNameAnnotation = "org.opencontainers.image.ref.name";

#if defined(__x86_64__)
constexpr const char* kArchitecture = "amd64";
#elif defined(__aarch64__)
constexpr const char* kArchitecture = "arm64";
#else
#error "add this architecture's OCI name"
#endif

// ---------------------------------------------------------------------------
// Digests and names

class Sha256 {
 public:
  Sha256() : ctx_(EVP_MD_CTX_new()) {
    if (!ctx_ || EVP_DigestInit_ex(ctx_, EVP_sha256(), nullptr) != 1) fail("sha256: OpenSSL init failed");
  }
  ~Sha256() { EVP_MD_CTX_free(ctx_); }
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void update(const void* data, size_t size) { EVP_DigestUpdate(ctx_, data, size); }
  std::string hexDigest() const {
    EVP_MD_CTX* copy = EVP_MD_CTX_new();
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned len = 0;
    EVP_MD_CTX_copy_ex(copy, ctx_);
    EVP_DigestFinal_ex(copy, md, &len);
    EVP_MD_CTX_free(copy);
    static const char* hex = "0123456789abcdef";
    std::string out;
    for (unsigned i = 0; i < len; ++i) {
      out += hex[md[i] >> 4];
      out += hex[md[i] & 15];
    }
    return out;
  }

 private:
  EVP_MD_CTX* ctx_;
};

// Hashes and counts what passes through, so a blob is verified in the same
// pass that extracts it.
class HashingInputStream final : public InputStream {
 public:
  explicit HashingInputStream(InputStream& inner) : inner_(inner) {}
  size_t read(void* buffer, size_t size) override {
    size_t n = inner_.read(buffer, size);
    hash_.update(buffer, n);
    count_ += n;
    return n;
  }
  // Reads the rest, so the digest covers the whole stream even when the tar
  // reader stopped at its end-of-archive marker.
  void drain() {
    char buf[65536];
    while (read(buf, sizeof buf) > 0) {
    }
  }
  std::string digest() const { return "sha256:" + hash_.hexDigest(); }
  uint64_t count() const { return count_; }

 private:
  InputStream& inner_;
  Sha256 hash_;
  uint64_t count_ = 0;
};

bool isLowerHex(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

bool isDigest(std::string_view digest) { return isImageDigest(digest); }

std::string_view hexOf(std::string_view digest) { return digest.substr(7); }

// Validates a digest from untrusted input; only its hex is ever used to build a path.
std::string checkedDigest(const nlohmann::json& value, std::string_view what) {
  if (!value.is_string()) fail(ErrorKind::InvalidInput, std::string(what) + ": digest missing");
  auto digest = value.get<std::string>();
  if (!isDigest(digest)) {
    if (!digest.starts_with("sha256:")) {
      fail(ErrorKind::Unimplemented, std::string(what) + ": digest `" + digest + "`: only sha256 is supported");
    }
    fail(ErrorKind::InvalidInput, std::string(what) + ": malformed digest `" + digest + "`");
  }
  return digest;
}

std::string shortDigest(std::string_view digest) { return std::string(digest.substr(0, 7 + 12)) + "…"; }

void checkName(std::string_view name) {
  bool ok = !name.empty() && name.size() <= 255 && !name.starts_with("sha256:") &&
            std::all_of(name.begin(), name.end(), [](char c) {
              return std::isalnum(static_cast<unsigned char>(c)) || std::strchr("._-/:@", c);
            });
  if (!ok) fail(ErrorKind::InvalidInput, "image name `" + std::string(name) + "` is not valid");
}

std::string nowRfc3339() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

nlohmann::json parseJson(std::string_view text, std::string_view what) {
  auto json = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_object()) fail(ErrorKind::InvalidInput, std::string(what) + ": not a JSON object");
  return json;
}

std::vector<std::string> stringList(const nlohmann::json& value, std::string_view what) {
  std::vector<std::string> out;
  if (value.is_null()) return out;
  if (!value.is_array()) fail(ErrorKind::InvalidInput, std::string(what) + ": not a list");
  for (auto& item : value) {
    if (!item.is_string()) fail(ErrorKind::InvalidInput, std::string(what) + ": not a list of strings");
    out.push_back(item.get<std::string>());
  }
  return out;
}

std::string stringField(const nlohmann::json& object, const char* key) {
  auto it = object.find(key);
  if (it == object.end() || it->is_null()) return {};
  if (!it->is_string()) fail(ErrorKind::InvalidInput, std::string("`") + key + "`: not a string");
  return it->get<std::string>();
}

// ---------------------------------------------------------------------------
// Filesystem operations that never follow a symlink: the tree being built is
// attacker-shaped, and a whiteout like `lnk/.wh.etc` after `lnk -> /` must not
// reach the host.

// Opens directory `rel` beneath `rootFd` refusing any symlink on the way.
// Returns an invalid Fd with `err` set on failure.
Fd openDirNoSymlinks(int rootFd, const std::string& rel, int& err) {
  struct open_how how = {};
  how.flags = O_RDONLY | O_DIRECTORY | O_CLOEXEC;
  how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
  for (;;) {
    int fd = sys::openat2(rootFd, rel.empty() ? "." : rel.c_str(), &how);
    if (fd >= 0) return Fd(fd);
    if (errno == EINTR || errno == EAGAIN) continue;
    err = errno;
    return Fd();
  }
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
    std::vector<std::string> names;
    {
      DIR* dir = ::fdopendir(SYSCALL(::dup(child.get()), "dup"));
      if (!dir) failErrno(errno, "opendir `" + name + "`");
      while (auto* ent = ::readdir(dir)) {
        if (std::strcmp(ent->d_name, ".") != 0 && std::strcmp(ent->d_name, "..") != 0) names.push_back(ent->d_name);
      }
      ::closedir(dir);
    }
    for (auto& n : names) removeAt(child.get(), n);
    SYSCALL(::unlinkat(dirFd, name.c_str(), AT_REMOVEDIR), "rmdir", name);
  } else {
    SYSCALL(::unlinkat(dirFd, name.c_str(), 0), "unlink", name);
  }
}

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

std::pair<std::string, std::string> splitParent(const std::string& path) {
  auto slash = path.rfind('/');
  if (slash == std::string::npos) return {"", path};
  return {path.substr(0, slash), path.substr(slash + 1)};
}

std::string joinPath(const std::string& dir, const std::string& name) { return dir.empty() ? name : dir + "/" + name; }

// Turns a tar entry name into a clean relative path ("" is the root itself),
// or says why it is refused.
std::optional<std::string> cleanEntryPath(std::string_view raw, std::string& why) {
  if (raw.starts_with('/')) {
    why = "refused (absolute path)";
    return std::nullopt;
  }
  std::string out;
  size_t pos = 0;
  while (pos <= raw.size()) {
    size_t end = raw.find('/', pos);
    if (end == std::string_view::npos) end = raw.size();
    auto part = raw.substr(pos, end - pos);
    pos = end + 1;
    if (part.empty() || part == ".") continue;
    if (part == "..") {
      why = "refused (path leaves the rootfs)";
      return std::nullopt;
    }
    if (!out.empty()) out += '/';
    out += part;
  }
  return out;
}

// ---------------------------------------------------------------------------
// libarchive glue

std::string archiveError(archive* a) {
  const char* s = archive_error_string(a);
  return s ? s : "unknown libarchive error";
}

// Reads a tar (any compression libarchive detects) from an InputStream.
// Exceptions from the stream are carried across libarchive's C frames and
// rethrown at the caller.
class TarReader {
 public:
  explicit TarReader(InputStream& in) : in_(in), buffer_(1 << 16) {
    if (!a_) fail(ErrorKind::Overloaded, "libarchive: out of memory");
    archive_read_support_filter_all(get());
    archive_read_support_format_tar(get());
    if (archive_read_open(get(), this, nullptr, &TarReader::readCallback, nullptr) != ARCHIVE_OK) {
      rethrowOrFail("not a tar archive");
    }
  }

  archive* get() { return a_.get(); }

  // The next entry, or nullptr at the end of the archive.
  archive_entry* next() {
    archive_entry* entry = nullptr;
    int r = archive_read_next_header(get(), &entry);
    if (r == ARCHIVE_EOF) return nullptr;
    if (r == ARCHIVE_WARN) logWarn(std::string("tar: ") + archiveError(get()));
    if (r < ARCHIVE_WARN) rethrowOrFail("corrupt tar archive");
    return entry;
  }

  std::string readData(uint64_t max) {
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

  [[noreturn]] void rethrowOrFail(const std::string& what) {
    if (pending_) std::rethrow_exception(std::exchange(pending_, nullptr));
    fail(ErrorKind::InvalidInput, what + " (" + archiveError(get()) + ")");
  }

 private:
  static la_ssize_t readCallback(archive* a, void* self, const void** buffer) {
    auto* reader = static_cast<TarReader*>(self);
    try {
      *buffer = reader->buffer_.data();
      return static_cast<la_ssize_t>(reader->in_.read(reader->buffer_.data(), reader->buffer_.size()));
    } catch (...) {
      reader->pending_ = std::current_exception();
      archive_set_error(a, EIO, "read failed");
      return -1;
    }
  }

  InputStream& in_;
  std::vector<char> buffer_;
  std::unique_ptr<archive, decltype(&archive_read_free)> a_{archive_read_new(), archive_read_free};
  std::exception_ptr pending_;
};

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
    if (r == ARCHIVE_WARN) logWarn("image extraction: " + archiveError(a_));
    if (r < ARCHIVE_WARN) fail("finishing extraction: " + archiveError(a_));
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

enum class Whiteouts { Literal, Apply };

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
    if (r == ARCHIVE_WARN) logWarn("image extraction: `" + path + "`: " + archiveError(writer_.get()));
    if (r < ARCHIVE_WARN) fail(ErrorKind::InvalidInput, "refused (" + archiveError(writer_.get()) + ")");
    if (archive_entry_size(entry) > 0) copyData(reader);
    r = archive_write_finish_entry(writer_.get());
    if (r < ARCHIVE_WARN) fail("write: " + archiveError(writer_.get()));
    noteWritten(path);
  }

  std::string relativePath(const char* raw, const std::string& prefix) {
    std::string why;
    auto path = cleanEntryPath(raw, why);
    if (!path) fail(ErrorKind::InvalidInput, why);
    if (prefix.empty()) return *path;
    if (*path == prefix) return {};
    if (!path->starts_with(prefix + "/")) fail(ErrorKind::InvalidInput, "refused (not under " + prefix + "/)");
    return path->substr(prefix.size() + 1);
  }

  Fd openParent(const std::string& parent, bool missingOk) {
    int err = 0;
    Fd fd = openDirNoSymlinks(rootFd_.get(), parent, err);
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
        fail("write: " + archiveError(writer_.get()));
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

// Writes a tar to an OutputStream, carrying exceptions across libarchive.
class TarWriter {
 public:
  explicit TarWriter(OutputStream& out) : out_(out) {
    if (!a_) fail(ErrorKind::Overloaded, "libarchive: out of memory");
    archive_write_set_format_pax_restricted(get());
    archive_write_set_bytes_in_last_block(get(), 1);
    if (archive_write_open(get(), this, nullptr, &TarWriter::writeCallback, nullptr) != ARCHIVE_OK) {
      rethrowOrFail("tar");
    }
  }

  archive* get() { return a_.get(); }

  void writeHeader(archive_entry* entry) {
    int r = archive_write_header(get(), entry);
    if (r == ARCHIVE_WARN) logWarn("tar: " + archiveError(get()));
    if (r < ARCHIVE_WARN) rethrowOrFail(std::string("tar header of `") + archive_entry_pathname(entry) + "`");
  }
  void writeData(const void* data, size_t size) {
    if (archive_write_data(get(), data, size) < 0) rethrowOrFail("tar data");
  }
  void close() {
    if (archive_write_close(get()) != ARCHIVE_OK) rethrowOrFail("tar close");
  }

  [[noreturn]] void rethrowOrFail(const std::string& what) {
    if (pending_) std::rethrow_exception(std::exchange(pending_, nullptr));
    fail(what + ": " + archiveError(get()));
  }

 private:
  static la_ssize_t writeCallback(archive* a, void* self, const void* data, size_t size) {
    auto* writer = static_cast<TarWriter*>(self);
    try {
      writer->out_.write(data, size);
      return static_cast<la_ssize_t>(size);
    } catch (...) {
      writer->pending_ = std::current_exception();
      archive_set_error(a, EIO, "write failed");
      return -1;
    }
  }

  OutputStream& out_;
  std::unique_ptr<archive, decltype(&archive_write_free)> a_{archive_write_new(), archive_write_free};
  std::exception_ptr pending_;
};

std::string hashFile(const fs::path& path) {
  Fd fd = openOrFail(path, O_RDONLY);
  FdInputStream in(fd.get());
  HashingInputStream hashing(in);
  hashing.drain();
  return hashing.digest();
}

// What a tar file holds, found in one pass that also hashes it.
struct TarScan {
  bool isOciLayout = false;
  std::string digest;
};

TarScan scanTar(const fs::path& path) {
  Fd fd = openOrFail(path, O_RDONLY);
  FdInputStream in(fd.get());
  HashingInputStream hashing(in);
  bool hasLayout = false, hasIndex = false;
  {
    TarReader reader(hashing);
    while (archive_entry* entry = reader.next()) {
      std::string why;
      const char* name = archive_entry_pathname(entry);
      auto path = name ? cleanEntryPath(name, why) : std::nullopt;
      if (path == "oci-layout") hasLayout = true;
      if (path == "index.json") hasIndex = true;
    }
  }
  hashing.drain();
  return {hasLayout && hasIndex, hashing.digest()};
}

// ---------------------------------------------------------------------------
// OCI image layout (image-spec v1.0/1.1 image-layout.md)

const std::set<std::string> kManifestTypes = {
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
};
const std::set<std::string> kIndexTypes = {
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
};
const std::set<std::string> kLayerTypes = {
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
};

struct Descriptor {
  std::string mediaType;
  std::string digest;
  uint64_t size = 0;
  nlohmann::json json;
};

Descriptor parseDescriptor(const nlohmann::json& json, std::string_view what) {
  if (!json.is_object()) fail(ErrorKind::InvalidInput, std::string(what) + ": descriptor is not an object");
  Descriptor d;
  d.json = json;
  d.mediaType = json.value("mediaType", "");
  d.digest = checkedDigest(json.contains("digest") ? json["digest"] : nlohmann::json(), what);
  auto size = json.find("size");
  if (size == json.end() || !size->is_number_integer() || size->get<int64_t>() < 0) {
    fail(ErrorKind::InvalidInput, std::string(what) + ": descriptor without a valid size");
  }
  d.size = size->get<uint64_t>();
  return d;
}

Fd openBlob(int layoutFd, const Descriptor& d) {
  try {
    return openBeneath(layoutFd, "blobs/sha256/" + std::string(hexOf(d.digest)), O_RDONLY);
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::NotFound) throw;
    fail(ErrorKind::InvalidInput, "blob " + d.digest + " is missing from the layout");
  }
}

void verifyBlob(const Descriptor& d, const HashingInputStream& read) {
  if (read.count() != d.size) {
    fail(ErrorKind::InvalidInput, "blob " + d.digest + ": size " + std::to_string(read.count()) +
                                      " does not match its descriptor's " + std::to_string(d.size));
  }
  if (read.digest() != d.digest) {
    fail(ErrorKind::InvalidInput, "blob " + d.digest + ": content hashes to " + read.digest());
  }
}

std::string readJsonBlob(int layoutFd, const Descriptor& d) {
  if (d.size > kMaxJsonBlob) fail(ErrorKind::InvalidInput, "blob " + d.digest + ": too large for a manifest or config");
  Fd fd = openBlob(layoutFd, d);
  FdInputStream in(fd.get());
  HashingInputStream hashing(in);
  std::string out;
  char buf[65536];
  while (size_t n = hashing.read(buf, sizeof buf)) {
    out.append(buf, n);
    if (out.size() > kMaxJsonBlob) break;
  }
  verifyBlob(d, hashing);
  return out;
}

std::string tagOf(const std::string& name) {
  auto colon = name.rfind(':');
  auto slash = name.rfind('/');
  if (colon == std::string::npos || (slash != std::string::npos && colon < slash)) return {};
  return name.substr(colon + 1);
}

// Picks the manifest for `name` (or the first) from an index, following
// nested indexes to this machine's platform.
Descriptor selectManifest(int layoutFd, const nlohmann::json& index, const std::string& name, int depth) {
  if (depth > 4) fail(ErrorKind::InvalidInput, "image indexes nested too deeply");
  auto manifests = index.find("manifests");
  if (manifests == index.end() || !manifests->is_array() || manifests->empty()) {
    fail(ErrorKind::InvalidInput, "index lists no manifests");
  }
  std::vector<Descriptor> all;
  for (auto& m : *manifests) all.push_back(parseDescriptor(m, "index"));

  const Descriptor* chosen = nullptr;
  if (depth == 0) {
    chosen = &all.front();
    auto tag = tagOf(name);
    for (auto& d : all) {
      auto ann = d.json.find("annotations");
      if (ann == d.json.end() || !ann->is_object() || !ann->contains(kRefNameAnnotation)) continue;
      auto& ref = (*ann)[kRefNameAnnotation];
      if (ref.is_string() && !name.empty() && (ref == name || (!tag.empty() && ref == tag))) {
        chosen = &d;
        break;
      }
    }
  } else {
    for (auto& d : all) {
      auto platform = d.json.find("platform");
      if (platform == d.json.end() || !platform->is_object()) continue;
      if (platform->value("os", "") == "linux" && platform->value("architecture", "") == kArchitecture) {
        chosen = &d;
        break;
      }
    }
    if (!chosen) fail(ErrorKind::NotFound, std::string("no manifest for linux/") + kArchitecture);
  }

  if (kIndexTypes.count(chosen->mediaType)) {
    auto nested = parseJson(readJsonBlob(layoutFd, *chosen), "index " + chosen->digest);
    return selectManifest(layoutFd, nested, name, depth + 1);
  }
  if (!chosen->mediaType.empty() && !kManifestTypes.count(chosen->mediaType)) {
    fail(ErrorKind::Unimplemented, "manifest " + chosen->digest + ": media type `" + chosen->mediaType + "`");
  }
  return *chosen;
}

ImageConfig parseImageConfig(const nlohmann::json& config) {
  ImageConfig out;
  auto c = config.find("config");
  if (c == config.end() || c->is_null()) return out;
  if (!c->is_object()) fail(ErrorKind::InvalidInput, "image config: `config` is not an object");
  if (c->contains("Entrypoint")) out.entrypoint = stringList((*c)["Entrypoint"], "Entrypoint");
  if (c->contains("Cmd")) out.cmd = stringList((*c)["Cmd"], "Cmd");
  if (c->contains("Env")) out.env = stringList((*c)["Env"], "Env");
  out.workingDir = stringField(*c, "WorkingDir");
  out.user = stringField(*c, "User");
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------
// ImageInfo

nlohmann::json ImageInfo::toJson() const {
  return {
      {"digest", digest},
      {"names", names},
      {"size", size},
      {"created", created},
      {"config",
       {{"entrypoint", config.entrypoint},
        {"cmd", config.cmd},
        {"env", config.env},
        {"workingDir", config.workingDir},
        {"user", config.user}}},
  };
}

ImageInfo ImageInfo::fromJson(const nlohmann::json& json) {
  if (!json.is_object()) fail(ErrorKind::InvalidInput, "image.json: not a JSON object");
  ImageInfo info;
  info.digest = checkedDigest(json.contains("digest") ? json["digest"] : nlohmann::json(), "image.json");
  if (json.contains("names")) info.names = stringList(json["names"], "image.json: names");
  for (auto& name : info.names) checkName(name);
  if (json.contains("size")) {
    if (!json["size"].is_number_unsigned()) fail(ErrorKind::InvalidInput, "image.json: size is not a number");
    info.size = json["size"].get<uint64_t>();
  }
  info.created = stringField(json, "created");
  if (auto c = json.find("config"); c != json.end() && !c->is_null()) {
    if (!c->is_object()) fail(ErrorKind::InvalidInput, "image.json: config is not an object");
    info.config.entrypoint = stringList(c->value("entrypoint", nlohmann::json()), "entrypoint");
    info.config.cmd = stringList(c->value("cmd", nlohmann::json()), "cmd");
    info.config.env = stringList(c->value("env", nlohmann::json()), "env");
    info.config.workingDir = stringField(*c, "workingDir");
    info.config.user = stringField(*c, "user");
  }
  return info;
}

// ---------------------------------------------------------------------------
// ImageStore

// An import under construction in tmp/: removed with everything in it unless committed.
struct ImageStore::Pending {
  explicit Pending(const fs::path& tmp) : dir(tmp, "import") {
    fs::create_directory(rootfs());
    fs::permissions(rootfs(), fs::perms(0755));
  }
  fs::path rootfs() const { return dir.path() / "rootfs"; }
  TempDir dir;
};

ImageStore::ImageStore(fs::path root) {
  fs::create_directories(root / "sha256");
  fs::create_directories(root / "tmp");
  // Canonical, so libarchive's symlink checks see no symlink in our own prefix.
  root_ = fs::canonical(root);
  // Whatever is in tmp/ is an import or removal that a previous run did not finish.
  for (auto& entry : fs::directory_iterator(tmpDir())) removeTree(entry.path());
}

fs::path ImageStore::imageDir(std::string_view digest) const { return root_ / "sha256" / std::string(hexOf(digest)); }

fs::path ImageStore::rootfsPath(const ImageInfo& image) const { return imageDir(image.digest) / "rootfs"; }

std::optional<ImageInfo> ImageStore::readInfoIfExists(std::string_view digest) const {
  auto text = readFileIfExists(imageDir(digest) / "image.json");
  if (!text) return std::nullopt;
  ErrorContext ctx("image " + std::string(digest));
  return ImageInfo::fromJson(parseJson(*text, "image.json"));
}

void ImageStore::writeInfo(const ImageInfo& info) const {
  writeFileAtomic(imageDir(info.digest) / "image.json", info.toJson().dump(2) + "\n");
}

std::vector<ImageInfo> ImageStore::listLocked() const {
  std::vector<ImageInfo> out;
  for (auto& entry : fs::directory_iterator(root_ / "sha256")) {
    auto hex = entry.path().filename().string();
    if (hex.size() != 64 || !isLowerHex(hex)) continue;
    try {
      if (auto info = readInfoIfExists("sha256:" + hex)) out.push_back(std::move(*info));
    } catch (const std::exception& e) {
      logWarn(std::string("image store: skipping unreadable image: ") + e.what());
    }
  }
  std::sort(out.begin(), out.end(), [](auto& a, auto& b) { return a.digest < b.digest; });
  return out;
}

std::vector<ImageInfo> ImageStore::list() const {
  std::lock_guard lock(mutex_);
  return listLocked();
}

std::optional<ImageInfo> ImageStore::findLocked(std::string_view ref) const {
  if (ref.empty()) return std::nullopt;
  if (isDigest(ref)) return readInfoIfExists(ref);

  auto images = listLocked();
  auto named = [&](std::string_view n) -> std::optional<ImageInfo> {
    for (auto& image : images) {
      if (std::find(image.names.begin(), image.names.end(), n) != image.names.end()) return image;
    }
    return std::nullopt;
  };
  if (auto image = named(ref)) return image;
  if (tagOf(std::string(ref)).empty()) {
    if (auto image = named(std::string(ref) + ":latest")) return image;
  }

  auto prefix = ref.starts_with("sha256:") ? ref.substr(7) : ref;
  if (prefix.size() < 6 || !isLowerHex(prefix)) return std::nullopt;
  std::optional<ImageInfo> match;
  for (auto& image : images) {
    if (!hexOf(image.digest).starts_with(prefix)) continue;
    if (match) fail(ErrorKind::InvalidInput, "image prefix `" + std::string(ref) + "` is ambiguous");
    match = image;
  }
  return match;
}

std::optional<ImageInfo> ImageStore::findIfExists(std::string_view ref) const {
  std::lock_guard lock(mutex_);
  return findLocked(ref);
}

ImageInfo ImageStore::find(std::string_view ref) const {
  auto image = findIfExists(ref);
  if (!image) fail(ErrorKind::NotFound, "image `" + std::string(ref) + "` not found");
  return *image;
}

void ImageStore::takeNameLocked(const std::string& name, const std::string& keepDigest) {
  for (auto& image : listLocked()) {
    if (image.digest == keepDigest) continue;
    auto it = std::find(image.names.begin(), image.names.end(), name);
    if (it == image.names.end()) continue;
    image.names.erase(it);
    writeInfo(image);
  }
}

ImageInfo ImageStore::addNameToExisting(const std::string& digest, const std::string& name) {
  auto info = readInfoIfExists(digest);
  if (!info) fail(ErrorKind::NotFound, "image `" + digest + "` not found");
  if (name.empty() || std::find(info->names.begin(), info->names.end(), name) != info->names.end()) return *info;
  // Taken from the others first: a crash in between leaves the name unassigned, never doubly assigned.
  takeNameLocked(name, digest);
  info->names.push_back(name);
  writeInfo(*info);
  return *info;
}

void ImageStore::addName(std::string_view ref, const std::string& name) {
  checkName(name);
  std::lock_guard lock(mutex_);
  auto image = findLocked(ref);
  if (!image) fail(ErrorKind::NotFound, "image `" + std::string(ref) + "` not found");
  addNameToExisting(image->digest, name);
}

ImageInfo ImageStore::commit(Pending& pending, ImageInfo info, const std::string& name, bool adoptNamesOnlyIfFree) {
  info.size = treeSize(pending.rootfs());
  std::lock_guard lock(mutex_);
  if (fs::exists(imageDir(info.digest))) return addNameToExisting(info.digest, name);

  if (adoptNamesOnlyIfFree) {
    auto images = listLocked();
    std::erase_if(info.names, [&](const std::string& n) {
      return std::any_of(images.begin(), images.end(), [&](auto& image) {
        return std::find(image.names.begin(), image.names.end(), n) != image.names.end();
      });
    });
  } else {
    info.names.clear();
    if (!name.empty()) {
      takeNameLocked(name, info.digest);
      info.names.push_back(name);
    }
  }
  writeFileAtomic(pending.dir.path() / "image.json", info.toJson().dump(2) + "\n");
  auto target = imageDir(info.digest);
  SYSCALL(::rename(pending.dir.path().c_str(), target.c_str()), "rename", pending.dir.path().string(), target.string());
  pending.dir.keep();
  Fd dirFd = openOrFail(root_ / "sha256", O_RDONLY | O_DIRECTORY);
  SYSCALL(::fsync(dirFd.get()), "fsync", (root_ / "sha256").string());
  logInfo("image store: imported " + info.digest + (name.empty() ? "" : " as `" + name + "`"));
  return info;
}

void ImageStore::remove(std::string_view ref, const std::function<bool(const std::string& digest)>& inUse) {
  fs::path doomed;
  {
    std::lock_guard lock(mutex_);
    auto image = findLocked(ref);
    if (!image) fail(ErrorKind::NotFound, "image `" + std::string(ref) + "` not found");
    if (inUse && inUse(image->digest)) {
      fail(ErrorKind::Conflict, "image `" + std::string(ref) + "` (" + image->digest + ") is in use by a container");
    }
    // Out of sha256/ in one rename, so no reader sees a half-deleted image.
    TempDir holder(tmpDir(), "remove");
    auto from = imageDir(image->digest);
    SYSCALL(::rename(from.c_str(), (holder.path() / "image").c_str()), "rename", from.string());
    doomed = holder.keep();
  }
  removeTree(doomed);
}

// --- imports

ImageInfo ImageStore::import(const fs::path& source, const std::string& name) {
  ErrorContext ctx("image import of `" + (name.empty() ? source.string() : name) + "`");
  if (!name.empty()) checkName(name);
  if (fs::is_directory(source)) {
    if (!fs::exists(source / "oci-layout") || !fs::exists(source / "index.json")) {
      fail(ErrorKind::InvalidInput, "`" + source.string() + "` is a directory without oci-layout and index.json");
    }
    return importOciLayoutDir(source, name);
  }
  auto scan = [&] {
    ErrorContext ctx2("`" + source.string() + "`");
    return scanTar(source);
  }();
  if (scan.isOciLayout) return importOciLayout(source, name);
  return importRootfsTarWithDigest(source, name, scan.digest);
}

ImageInfo ImageStore::importRootfsTar(const fs::path& tarball, const std::string& name) {
  ErrorContext ctx("image import of `" + (name.empty() ? tarball.string() : name) + "`");
  if (!name.empty()) checkName(name);
  return importRootfsTarWithDigest(tarball, name, hashFile(tarball));
}

ImageInfo ImageStore::importRootfsTarWithDigest(const fs::path& tarball, const std::string& name,
                                               const std::string& digest) {
  {
    std::lock_guard lock(mutex_);
    if (fs::exists(imageDir(digest))) return addNameToExisting(digest, name);
  }
  Pending pending(tmpDir());
  Fd fd = openOrFail(tarball, O_RDONLY);
  FdInputStream in(fd.get());
  HashingInputStream hashing(in);
  {
    ErrorContext ctx("`" + tarball.string() + "`");
    TarReader reader(hashing);
    LayerApplier(pending.rootfs(), Whiteouts::Literal).apply(reader);
  }
  hashing.drain();
  if (hashing.digest() != digest) fail(ErrorKind::Conflict, "`" + tarball.string() + "` changed while importing");
  ImageInfo info;
  info.digest = digest;
  info.created = nowRfc3339();
  return commit(pending, std::move(info), name, /*adoptNamesOnlyIfFree=*/false);
}

ImageInfo ImageStore::importOciLayout(const fs::path& dirOrTar, const std::string& name) {
  ErrorContext ctx("image import of `" + (name.empty() ? dirOrTar.string() : name) + "`");
  if (!name.empty()) checkName(name);
  if (fs::is_directory(dirOrTar)) return importOciLayoutDir(dirOrTar, name);
  // Blobs are looked up by name, so the layout is unpacked first (with the
  // same care as a layer) and read from there.
  TempDir staging(tmpDir(), "layout");
  fs::create_directory(staging.path() / "layout");
  {
    ErrorContext ctx2("`" + dirOrTar.string() + "`");
    Fd fd = openOrFail(dirOrTar, O_RDONLY);
    FdInputStream in(fd.get());
    TarReader reader(in);
    LayerApplier(staging.path() / "layout", Whiteouts::Literal).apply(reader);
  }
  return importOciLayoutDir(staging.path() / "layout", name);
}

ImageInfo ImageStore::importOciLayoutDir(const fs::path& layout, const std::string& name) {
  Fd layoutFd = openOrFail(layout, O_RDONLY | O_DIRECTORY);
  auto readSmall = [&](const char* file) {
    Fd fd = openBeneath(layoutFd.get(), file, O_RDONLY);
    FdInputStream in(fd.get());
    std::string out;
    char buf[65536];
    while (size_t n = in.read(buf, sizeof buf)) {
      out.append(buf, n);
      if (out.size() > kMaxJsonBlob) fail(ErrorKind::InvalidInput, std::string(file) + ": too large");
    }
    return parseJson(out, file);
  };
  auto version = readSmall("oci-layout").value("imageLayoutVersion", "");
  if (!version.starts_with("1.")) fail(ErrorKind::Unimplemented, "oci-layout version `" + version + "`");

  auto manifestDesc = selectManifest(layoutFd.get(), readSmall("index.json"), name, 0);
  ErrorContext ctx("manifest " + shortDigest(manifestDesc.digest));
  auto manifest = parseJson(readJsonBlob(layoutFd.get(), manifestDesc), "manifest");
  {
    std::lock_guard lock(mutex_);
    if (fs::exists(imageDir(manifestDesc.digest))) return addNameToExisting(manifestDesc.digest, name);
  }
  if (manifest.value("schemaVersion", 0) != 2) fail(ErrorKind::Unimplemented, "manifest schemaVersion is not 2");
  auto configDesc = parseDescriptor(manifest.value("config", nlohmann::json()), "config");
  auto config = parseJson(readJsonBlob(layoutFd.get(), configDesc), "config " + shortDigest(configDesc.digest));
  auto layers = manifest.value("layers", nlohmann::json::array());
  if (!layers.is_array()) fail(ErrorKind::InvalidInput, "manifest: layers is not a list");

  Pending pending(tmpDir());
  for (auto& layerJson : layers) {
    auto layer = parseDescriptor(layerJson, "layer");
    ErrorContext layerCtx("layer " + shortDigest(layer.digest));
    if (!kLayerTypes.count(layer.mediaType)) fail(ErrorKind::Unimplemented, "media type `" + layer.mediaType + "`");
    Fd fd = openBlob(layoutFd.get(), layer);
    FdInputStream in(fd.get());
    HashingInputStream hashing(in);
    {
      TarReader reader(hashing);
      LayerApplier(pending.rootfs(), Whiteouts::Apply).apply(reader);
    }
    hashing.drain();
    // Verified after extraction to read each layer once; a mismatch discards the whole import.
    verifyBlob(layer, hashing);
  }

  ImageInfo info;
  info.digest = manifestDesc.digest;
  info.created = stringField(config, "created");
  if (info.created.empty()) info.created = nowRfc3339();
  info.config = parseImageConfig(config);
  return commit(pending, std::move(info), name, /*adoptNamesOnlyIfFree=*/false);
}

// --- moving images between agents

void ImageStore::exportImage(const std::string& digest, OutputStream& out) {
  auto info = find(digest);
  ErrorContext ctx("image export of " + info.digest);
  auto rootfs = rootfsPath(info).string();
  TarWriter tar(out);

  auto json = info.toJson().dump(2) + "\n";
  {
    std::unique_ptr<archive_entry, decltype(&archive_entry_free)> entry(archive_entry_new(), archive_entry_free);
    archive_entry_set_pathname(entry.get(), "image.json");
    archive_entry_set_filetype(entry.get(), AE_IFREG);
    archive_entry_set_perm(entry.get(), 0644);
    archive_entry_set_size(entry.get(), static_cast<la_int64_t>(json.size()));
    tar.writeHeader(entry.get());
    tar.writeData(json.data(), json.size());
  }

  std::unique_ptr<archive, decltype(&archive_read_free)> disk(archive_read_disk_new(), archive_read_free);
  std::unique_ptr<archive_entry_linkresolver, decltype(&archive_entry_linkresolver_free)> links(
      archive_entry_linkresolver_new(), archive_entry_linkresolver_free);
  std::unique_ptr<archive_entry, decltype(&archive_entry_free)> entry(archive_entry_new(), archive_entry_free);
  if (!disk || !links || !entry) fail(ErrorKind::Overloaded, "libarchive: out of memory");
  archive_entry_linkresolver_set_strategy(links.get(), archive_format(tar.get()));
  archive_read_disk_set_symlink_physical(disk.get());
  archive_read_disk_set_behavior(disk.get(), ARCHIVE_READDISK_NO_TRAVERSE_MOUNTS | ARCHIVE_READDISK_NO_ACL |
                                                 ARCHIVE_READDISK_NO_FFLAGS);
  if (archive_read_disk_open(disk.get(), rootfs.c_str()) != ARCHIVE_OK) fail("read " + rootfs + ": " + archiveError(disk.get()));
  for (;;) {
    archive_entry_clear(entry.get());
    int r = archive_read_next_header2(disk.get(), entry.get());
    if (r == ARCHIVE_EOF) break;
    if (r == ARCHIVE_WARN) logWarn("image export: " + archiveError(disk.get()));
    if (r < ARCHIVE_WARN) fail("read " + rootfs + ": " + archiveError(disk.get()));
    archive_read_disk_descend(disk.get());

    std::string path = archive_entry_pathname(entry.get());
    if (path != rootfs && !path.starts_with(rootfs + "/")) fail("walked outside the rootfs: `" + path + "`");
    archive_entry_set_pathname(entry.get(), ("rootfs" + path.substr(rootfs.size())).c_str());
    archive_entry* current = entry.get();
    archive_entry* sparse = nullptr;
    // pax strategy: the first link carries the data, later ones become hard links of size 0.
    archive_entry_linkify(links.get(), &current, &sparse);
    tar.writeHeader(current);
    if (archive_entry_filetype(current) == AE_IFREG && archive_entry_size(current) > 0) {
      const void* buf;
      size_t size;
      la_int64_t offset;
      while ((r = archive_read_data_block(disk.get(), &buf, &size, &offset)) == ARCHIVE_OK) {
        tar.writeData(buf, size);
      }
      if (r != ARCHIVE_EOF) fail("read `" + path + "`: " + archiveError(disk.get()));
    }
  }
  tar.close();
}

ImageInfo ImageStore::importExported(InputStream& in) {
  ErrorContext ctx("image import from stream");
  HashingInputStream counting(in);  // for draining: the sender expects the stream read to its end
  TarReader reader(counting);
  archive_entry* first = reader.next();
  if (!first || archive_entry_pathname(first) != std::string("image.json") || archive_entry_filetype(first) != AE_IFREG) {
    fail(ErrorKind::InvalidInput, "stream does not start with image.json");
  }
  auto info = ImageInfo::fromJson(parseJson(reader.readData(kMaxJsonBlob), "image.json"));
  ErrorContext imageCtx("image " + info.digest);
  {
    std::lock_guard lock(mutex_);
    if (fs::exists(imageDir(info.digest))) {
      while (reader.next()) {
      }
      counting.drain();
      return *readInfoIfExists(info.digest);
    }
  }
  Pending pending(tmpDir());
  LayerApplier(pending.rootfs(), Whiteouts::Literal).apply(reader, "rootfs");
  counting.drain();
  return commit(pending, std::move(info), "", /*adoptNamesOnlyIfFree=*/true);
}

}  // namespace migrate
