#include "common/files.h"

#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <system_error>

#include "common/syscall.h"
#include "common/syscalls.h"

namespace migrate {

void writeFileAtomic(const fs::path& path, std::string_view content, mode_t mode) {
  auto dir = path.parent_path();
  if (dir.empty()) dir = ".";
  std::string tmpl = (dir / ("." + path.filename().string() + ".XXXXXX")).string();
  Fd fd(SYSCALL(::mkostemp(tmpl.data(), O_CLOEXEC), "mkstemp", tmpl));
  try {
    size_t done = 0;
    while (done < content.size()) {
      done += SYSCALL(::write(fd.get(), content.data() + done, content.size() - done), "write", tmpl);
    }
    SYSCALL(::fchmod(fd.get(), mode), "fchmod", tmpl);
    SYSCALL(::fsync(fd.get()), "fsync", tmpl);
    fd.reset();
    SYSCALL(::rename(tmpl.c_str(), path.c_str()), "rename", tmpl, path.string());
  } catch (...) {
    ::unlink(tmpl.c_str());
    throw;
  }
  Fd dirFd(SYSCALL(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC), "open", dir.string()));
  SYSCALL(::fsync(dirFd.get()), "fsync", dir.string());
}

std::optional<std::string> readFileIfExists(const fs::path& path) {
  int raw = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (raw < 0) {
    if (errno == ENOENT) return std::nullopt;
    failErrno(errno, "open " + path.string());
  }
  Fd fd(raw);
  std::string out;
  char buf[65536];
  for (;;) {
    auto n = SYSCALL(::read(fd.get(), buf, sizeof buf), "read", path.string());
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

std::optional<std::string> readFileTailIfExists(const fs::path& path, size_t maxBytes) {
  int raw = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (raw < 0) {
    if (errno == ENOENT) return std::nullopt;
    failErrno(errno, "open " + path.string());
  }
  Fd fd(raw);
  struct stat st;
  SYSCALL(::fstat(fd.get(), &st), "fstat", path.string());
  // Still growing, perhaps: read from where the tail began, never more than maxBytes.
  auto size = static_cast<uint64_t>(st.st_size);
  uint64_t offset = size > maxBytes ? size - maxBytes : 0;
  std::string out;
  char buf[65536];
  while (out.size() < maxBytes) {
    size_t want = std::min(sizeof buf, maxBytes - out.size());
    auto n = SYSCALL(::pread(fd.get(), buf, want, static_cast<off_t>(offset)), "pread", path.string());
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
    offset += static_cast<uint64_t>(n);
  }
  return out;
}

std::string readFile(const fs::path& path) {
  auto content = readFileIfExists(path);
  if (!content) fail(ErrorKind::NotFound, "open " + path.string() + ": No such file or directory");
  return *content;
}

Fd openOrFail(const fs::path& path, int flags, mode_t mode) {
  return Fd(SYSCALL(::open(path.c_str(), flags | O_CLOEXEC, mode), "open", path.string()));
}

Fd tryOpenBeneath(int dirfd, const fs::path& relative, int flags, Symlinks symlinks, int& error, mode_t mode) {
  struct open_how how = {};
  how.flags = static_cast<uint64_t>(flags | O_CLOEXEC);
  how.mode = (flags & O_CREAT) ? mode : 0;
  how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
  if (symlinks == Symlinks::Refuse) how.resolve |= RESOLVE_NO_SYMLINKS;
  const char* path = relative.empty() ? "." : relative.c_str();
  for (;;) {
    int fd = sys::openat2(dirfd, path, &how);
    if (fd >= 0) return Fd(fd);
    // EAGAIN: a rename or mount raced the walk (openat2(2)); the next try sees it done.
    if (errno == EINTR || errno == EAGAIN) continue;
    error = errno;
    return Fd();
  }
}

Fd openBeneath(int dirfd, const fs::path& relative, int flags, mode_t mode, Symlinks symlinks) {
  int error = 0;
  Fd fd = tryOpenBeneath(dirfd, relative, flags, symlinks, error, mode);
  if (!fd) failErrno(error, "openat2 " + relative.string());
  return fd;
}

TempDir::TempDir(const fs::path& parent, std::string_view prefix) {
  fs::create_directories(parent);
  std::string tmpl = (parent / (std::string(prefix) + ".XXXXXX")).string();
  if (!::mkdtemp(tmpl.data())) failErrno(errno, "mkdtemp " + tmpl);
  path_ = tmpl;
}

TempDir::TempDir(TempDir&& other) noexcept : path_(std::move(other.path_)) { other.path_.clear(); }

TempDir::~TempDir() {
  if (path_.empty()) return;
  std::error_code ec;
  fs::remove_all(path_, ec);
}

fs::path TempDir::keep() { return std::exchange(path_, {}); }

void removeTree(const fs::path& path) {
  std::error_code ec;
  fs::remove_all(path, ec);
  if (ec) fail("remove " + path.string() + ": " + ec.message());
}

uint64_t treeSize(const fs::path& path) {
  uint64_t total = 0;
  std::error_code ec;
  if (!fs::exists(path, ec)) return 0;
  for (auto it = fs::recursive_directory_iterator(path, fs::directory_options::skip_permission_denied, ec);
       it != fs::recursive_directory_iterator(); it.increment(ec)) {
    if (ec) break;
    if (it->is_regular_file(ec) && !it->is_symlink(ec)) total += it->file_size(ec);
  }
  return total;
}

}  // namespace migrate
