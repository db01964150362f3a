#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <optional>
#include <random>
#include <thread>

#include "agent/bundle-reader.h"
#include "agent/capacity.h"
#include "agent/storage.h"
#include "agent/bundle-writer.h"
#include "agent/rootfs-diff.h"
#include "common/error.h"
#include "common/files.h"
#include "common/hash-stream.h"
#include "common/subprocess.h"
#include "common/syscall.h"
#include "common/zstd-stream.h"
#include "tests/support/skip.h"

namespace migrate {
namespace {

// Bundles carry ownership, trusted.* xattrs and whiteouts: only root can
// make or restore those.
#define REQUIRE_ROOT()                                                                  \
  do {                                                                                  \
    if (::geteuid() != 0) SKIP_TEST("needs root (chown, trusted.* xattrs, mknod)");     \
  } while (0)

std::string randomBytes(size_t size, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(size, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

void writeFile(const fs::path& path, std::string_view content, mode_t mode = 0644) {
  fs::create_directories(path.parent_path());
  Fd fd = openOrFail(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
  SYSCALL(::fchmod(fd.get(), mode), "fchmod", path.string());
  SYSCALL(::write(fd.get(), content.data(), content.size()), "write", path.string());
}

std::string xattr(const fs::path& path, const char* name) {
  char value[256];
  auto n = ::lgetxattr(path.c_str(), name, value, sizeof value);
  return n < 0 ? std::string("<none>") : std::string(value, static_cast<size_t>(n));
}

struct stat lstatOf(const fs::path& path) {
  struct stat st;
  SYSCALL(::lstat(path.c_str(), &st), "lstat", path.string());
  return st;
}

// VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE, permitted = CAP_NET_BIND_SERVICE.
const std::string kCapability = [] {
  std::string v(20, '\0');
  uint32_t words[5] = {0x02000001, 1u << 10, 0, 0, 0};
  std::memcpy(v.data(), words, sizeof words);
  return v;
}();

// A work area whose only entries, after any readBundle, must be `target`
// (the bundle dir) and the untouched `canary`.
struct Arena {
  TempDir parent{fs::temp_directory_path(), "bundle-test"};
  fs::path target = parent.path() / "target";
  fs::path canary = parent.path() / "canary";
  Arena() {
    fs::create_directory(target);
    writeFile(canary, "canary");
  }
  void checkNothingOutside() const {
    std::vector<std::string> names;
    for (auto& e : fs::directory_iterator(parent.path())) names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    CHECK(names == std::vector<std::string>{"canary", "target"});
    CHECK(readFile(canary) == "canary");
    CHECK(lstatOf(canary).st_nlink == 1);
  }
};

struct SourceTree {
  TempDir root{fs::temp_directory_path(), "bundle-src"};
  BundleSources sources;
  std::string pages = randomBytes(3 << 20, 7);
  std::string big;

  SourceTree() {
    auto& r = root.path();
    sources.manifest.containerName = "web";
    sources.manifest.containerId = "0123abcd0123abcd0123abcd0123abcd";
    sources.manifest.imageDigest = "sha256:" + std::string(64, 'f');
    sources.manifest.imageName = "docker.io/library/busybox:latest";
    sources.manifest.sourceHost = "host1";
    sources.manifest.criuVersion = "4.2.1";
    sources.manifest.runtimeVersion = "runc 1.1.5";
    sources.manifest.createdAt = "2024-01-02T03:04:05Z";
    sources.manifest.tcpEstablished = true;
    writeFile(r / "config.dump", R"({"name":"web"})");
    writeFile(r / "spec.dump", R"({"ociVersion":"1.0.2"})");
    writeFile(r / "network.status", "[]");
    writeFile(r / "ctr.log", "hello from the container\n");
    sources.configDump = r / "config.dump";
    sources.specDump = r / "spec.dump";
    sources.networkStatus = r / "network.status";
    sources.ctrLog = r / "ctr.log";
    sources.statsDump = r / "stats-dump";  // absent: skipped

    auto cp = r / "checkpoint";
    writeFile(cp / "inventory.img", "inventory");
    writeFile(cp / "pages-1.img", pages, 0600);
    writeFile(cp / "core-1.img", "core");
    sources.checkpointDir = cp;

    auto up = r / "upper";
    fs::create_directories(up / "etc");
    writeFile(up / "etc" / "hostname", "web\n");
    SYSCALL(::mknod((up / "etc" / "removed").c_str(), S_IFCHR | 0, makedev(0, 0)), "mknod");
    fs::create_directories(up / "var" / "cache");
    SYSCALL(::setxattr((up / "var" / "cache").c_str(), "trusted.overlay.opaque", "y", 1, 0), "setxattr");
    writeFile(up / "var" / "cache" / "only", "only this");
    fs::create_directories(up / "home" / "user");
    writeFile(up / "home" / "user" / "notes", "mine", 0640);
    SYSCALL(::chown((up / "home" / "user" / "notes").c_str(), 1000, 1000), "chown");
    SYSCALL(::chown((up / "home" / "user").c_str(), 1000, 1001), "chown");
    SYSCALL(::chmod((up / "home" / "user").c_str(), 0750), "chmod");
    SYSCALL(::setxattr((up / "home" / "user" / "notes").c_str(), "user.tag", "blue", 4, 0), "setxattr");
    writeFile(up / "usr" / "bin" / "ping", "ELF...", 04755);
    SYSCALL(::setxattr((up / "usr" / "bin" / "ping").c_str(), "security.capability", kCapability.data(),
                       kCapability.size(), 0),
            "setxattr");
    fs::create_symlink("/usr/bin/ping", up / "usr" / "bin" / "pong");
    // Names are bytes: valid UTF-8, and not.
    writeFile(up / "na\xc3\xafve", "utf-8");
    writeFile(up / "caf\xe9", "latin-1");
    writeFile(up / ("long-" + std::string(200, 'n')), "long name");
    writeFile(up / "usr" / "a", "linked");
    fs::create_hard_link(up / "usr" / "a", up / "usr" / "b");
    // 20 MiB, data only at both ends.
    std::string head = randomBytes(1 << 20, 8), tail = randomBytes(1 << 20, 9);
    {
      Fd fd = openOrFail(up / "big", O_WRONLY | O_CREAT, 0644);
      SYSCALL(::pwrite(fd.get(), head.data(), head.size(), 0), "pwrite");
      SYSCALL(::pwrite(fd.get(), tail.data(), tail.size(), (19 << 20)), "pwrite");
    }
    big = head + std::string(18 << 20, '\0') + tail;
    sources.upperDir = up;
  }
};

void checkRoundTrip(const SourceTree& src, const fs::path& out, const BundleManifest& manifest) {
  CHECK(manifest.containerName == "web");
  CHECK(manifest.sourceHost == "host1");
  CHECK(manifest.tcpEstablished);
  CHECK(manifest.checkpointBytes == 9 + src.pages.size() + 4);
  CHECK(manifest.rootfsDiffBytes == 4 + 9 + 4 + 6 + 6 + 5 + 7 + 9 + src.big.size());
  CHECK(manifest.checkpointEntries == 4);   // checkpoint/ and its three images
  CHECK(manifest.rootfsDiffEntries == 20);  // rootfs-diff/, 18 entries below it and the whiteout

  CHECK(readFile(out / "config.dump") == R"({"name":"web"})");
  CHECK(readFile(out / "spec.dump") == R"({"ociVersion":"1.0.2"})");
  CHECK(readFile(out / "network.status") == "[]");
  CHECK(readFile(out / "ctr.log") == "hello from the container\n");
  CHECK(!fs::exists(out / "stats-dump"));
  CHECK(BundleManifest::fromJson(nlohmann::json::parse(readFile(out / "manifest.json"))).containerId == "0123abcd0123abcd0123abcd0123abcd");

  CHECK(readFile(out / "checkpoint" / "inventory.img") == "inventory");
  CHECK(readFile(out / "checkpoint" / "pages-1.img") == src.pages);
  CHECK((lstatOf(out / "checkpoint" / "pages-1.img").st_mode & 07777) == 0600);

  auto diff = out / "rootfs-diff";
  CHECK(readFile(diff / "etc" / "hostname") == "web\n");
  auto wh = lstatOf(diff / "etc" / "removed");
  CHECK(isWhiteout(wh));
  CHECK(nlohmann::json::parse(readFile(out / "deleted.files")) == nlohmann::json::array({"etc/removed"}));
  CHECK(xattr(diff / "var" / "cache", "trusted.overlay.opaque") == "y");
  CHECK(readFile(diff / "var" / "cache" / "only") == "only this");

  auto notes = lstatOf(diff / "home" / "user" / "notes");
  CHECK((notes.st_mode & 07777) == 0640);
  CHECK(notes.st_uid == 1000);
  CHECK(notes.st_gid == 1000);
  CHECK(xattr(diff / "home" / "user" / "notes", "user.tag") == "blue");
  auto user = lstatOf(diff / "home" / "user");
  CHECK((user.st_mode & 07777) == 0750);
  CHECK(user.st_uid == 1000);
  CHECK(user.st_gid == 1001);
  CHECK(user.st_mtim.tv_sec == lstatOf(*src.sources.upperDir / "home" / "user").st_mtim.tv_sec);

  auto ping = lstatOf(diff / "usr" / "bin" / "ping");
  CHECK((ping.st_mode & 07777) == 04755);
  CHECK(xattr(diff / "usr" / "bin" / "ping", "security.capability") == kCapability);
  CHECK(fs::read_symlink(diff / "usr" / "bin" / "pong") == "/usr/bin/ping");
  CHECK(lstatOf(diff / "usr" / "a").st_ino == lstatOf(diff / "usr" / "b").st_ino);
  CHECK(readFile(diff / "usr" / "b") == "linked");

  CHECK(readFile(diff / "na\xc3\xafve") == "utf-8");
  CHECK(readFile(diff / "caf\xe9") == "latin-1");
  CHECK(readFile(diff / ("long-" + std::string(200, 'n'))) == "long name");

  auto big = lstatOf(diff / "big");
  CHECK(big.st_size == 20 << 20);
  CHECK(static_cast<uint64_t>(big.st_blocks) * 512 < (4u << 20));  // the hole stayed a hole
  CHECK(readFile(diff / "big") == src.big);
}

TEST_CASE("bundle round trip through zstd and sha256, single and multi-threaded", "[bundle]") {
  REQUIRE_ROOT();
  SourceTree src;
  for (int threads : {0, 2}) {
    INFO("zstd threads " << threads);
    Arena arena;
    StringOutputStream sink;
    Sha256OutputStream sentHash(sink);
    ZstdOutputStream zstd(sentHash, 3, threads);
    uint64_t lastProgress = 0;
    writeBundle(src.sources, zstd, [&](uint64_t bytes) {
      CHECK(bytes >= lastProgress);
      lastProgress = bytes;
    });
    zstd.finish();
    CHECK(lastProgress > src.big.size());
    CHECK(sink.data().size() < (6u << 20));  // 5 MiB of random data; the 18 MiB hole compressed away

    StringInputStream source(sink.data());
    Sha256InputStream receivedHash(source);
    ZstdInputStream unzstd(receivedHash);
    bool sawManifest = false;
    auto manifest = readBundle(unzstd, arena.target, {}, [&](const BundleManifest& m) {
      CHECK(m.containerName == "web");
      CHECK(!fs::exists(arena.target / "config.dump"));  // called before anything else arrives
      sawManifest = true;
    });
    CHECK(sawManifest);
    CHECK(receivedHash.hexDigest() == sentHash.hexDigest());
    CHECK(receivedHash.hexDigest() == sha256Hex(sink.data()));
    checkRoundTrip(src, arena.target, manifest);
    arena.checkNothingOutside();
  }
}

TEST_CASE("bundle streams through a pipe while it is written", "[bundle]") {
  REQUIRE_ROOT();
  SourceTree src;
  Arena arena;
  int fds[2];
  SYSCALL(::pipe2(fds, O_CLOEXEC), "pipe2");
  Fd readEnd(fds[0]);
  Fd writeEnd(fds[1]);
  std::string sentDigest;
  std::exception_ptr writerError;
  std::thread writer([&] {
    try {
      FdOutputStream pipe(writeEnd.get());
      Sha256OutputStream hash(pipe);
      ZstdOutputStream zstd(hash, 1, 2);
      writeBundle(src.sources, zstd);
      zstd.finish();
      sentDigest = hash.hexDigest();
    } catch (...) {
      writerError = std::current_exception();
    }
    writeEnd.reset();
  });
  std::string receivedDigest;
  BundleManifest manifest;
  try {
    FdInputStream pipe(readEnd.get());
    Sha256InputStream hash(pipe);
    ZstdInputStream zstd(hash);
    manifest = readBundle(zstd, arena.target);
    receivedDigest = hash.hexDigest();
  } catch (...) {
    readEnd.reset();  // unblocks the writer
    writer.join();
    throw;
  }
  writer.join();
  if (writerError) std::rethrow_exception(writerError);
  CHECK(receivedDigest == sentDigest);
  checkRoundTrip(src, arena.target, manifest);
  arena.checkNothingOutside();
}

TEST_CASE("bundle carries the last 64 MiB of a longer ctr.log", "[bundle]") {
  REQUIRE_ROOT();
  SourceTree src;
  {
    // 65 MiB, sparse, but for a marker at each end.
    Fd fd = openOrFail(*src.sources.ctrLog, O_WRONLY | O_TRUNC);
    SYSCALL(::pwrite(fd.get(), "head", 4, 0), "pwrite");
    SYSCALL(::pwrite(fd.get(), "tail", 4, (65 << 20) - 4), "pwrite");
  }
  Arena arena;
  StringOutputStream sink;
  writeBundle(src.sources, sink);
  StringInputStream in(sink.data());
  readBundle(in, arena.target);
  auto log = arena.target / "ctr.log";
  CHECK(fs::file_size(log) == bundle::kMaxCtrLogBytes);
  CHECK(readFileTailIfExists(log, 4) == "tail");
  CHECK(readFile(log).find("head") == std::string::npos);
}

TEST_CASE("bundle writer refuses what a bundle cannot carry", "[bundle]") {
  REQUIRE_ROOT();
  SourceTree src;
  StringOutputStream sink;
  SECTION("fifo in the upper dir") {
    SYSCALL(::mkfifo((*src.sources.upperDir / "fifo").c_str(), 0644), "mkfifo");
    CHECK_THROWS_WITH(writeBundle(src.sources, sink), Catch::Contains("is a fifo"));
  }
  SECTION("checkpoint without inventory.img") {
    fs::remove(src.sources.checkpointDir / "inventory.img");
    CHECK_THROWS_WITH(writeBundle(src.sources, sink), Catch::Contains("inventory.img"));
  }
  SECTION("missing spec.dump") {
    fs::remove(src.sources.specDump);
    CHECK_THROWS_WITH(writeBundle(src.sources, sink), Catch::Contains("spec.dump"));
  }
}

// ---- hostile bundles, crafted with libarchive directly

// The figures a crafted manifest declares; unset ones are computed from
// the entries the Tar really carries, as writeBundle would.
struct Declared {
  std::optional<uint64_t> checkpointBytes, rootfsDiffBytes, checkpointEntries, rootfsDiffEntries;
  std::optional<IdMapping> idMapping;
};

// Entries are recorded and written at finish(), so that manifest.json
// (wherever a test puts it) can declare what follows it.
struct Tar {
  struct Entry {
    std::string path;
    mode_t type = AE_IFREG;
    std::string content;
    std::string link;  // symlink target
    std::string hardlinkTarget;
    dev_t rdev = 0;
    std::optional<std::pair<int, Declared>> manifest;  // version and overrides
    la_int64_t owner = 0;  // uid and gid
  };
  std::vector<Entry> entries;

  Tar& add(const std::string& path, mode_t type, std::string_view content = {}, const char* link = nullptr,
           dev_t rdev = 0) {
    entries.push_back(Entry{path, type, std::string(content), link ? link : "", "", rdev, std::nullopt});
    return *this;
  }
  // The last entry added is owned by `id` (uid and gid).
  Tar& ownedBy(la_int64_t id) {
    entries.back().owner = id;
    return *this;
  }
  Tar& hardlink(const std::string& path, const std::string& target) {
    entries.push_back(Entry{path, AE_IFREG, "", "", target, 0, std::nullopt});
    return *this;
  }
  Tar& manifest(int version = kBundleFormatVersion, Declared declared = {}) {
    entries.push_back(Entry{"manifest.json", AE_IFREG, "", "", "", 0, std::pair{version, declared}});
    return *this;
  }
  // Everything a minimal valid bundle has up to checkpoint/inventory.img.
  Tar& minimal(Declared declared = {}) {
    manifest(kBundleFormatVersion, declared);
    add("config.dump", AE_IFREG, "{}");
    add("spec.dump", AE_IFREG, "{}");
    add("checkpoint", AE_IFDIR);
    return add("checkpoint/inventory.img", AE_IFREG, "inventory");
  }

  BundleManifest manifestFor(int version, const Declared& declared) const {
    BundleManifest m;
    m.formatVersion = version;
    m.containerName = "web";
    m.containerId = std::string(32, 'a');
    m.imageDigest = "sha256:" + std::string(64, 'b');
    m.sourceHost = "host1";
    for (auto& e : entries) {
      std::string top = e.path.substr(0, e.path.find('/'));
      bool data = e.type == AE_IFREG && e.hardlinkTarget.empty() && !e.manifest;
      if (top == "checkpoint") {
        ++m.checkpointEntries;
        if (data) m.checkpointBytes += e.content.size();
      } else if (top == "rootfs-diff") {
        ++m.rootfsDiffEntries;
        if (data) m.rootfsDiffBytes += e.content.size();
      } else if (top == "deleted.files") {
        auto list = nlohmann::json::parse(e.content, nullptr, false);
        if (list.is_array()) m.rootfsDiffEntries += list.size();
      }
    }
    m.checkpointBytes = declared.checkpointBytes.value_or(m.checkpointBytes);
    m.rootfsDiffBytes = declared.rootfsDiffBytes.value_or(m.rootfsDiffBytes);
    m.checkpointEntries = declared.checkpointEntries.value_or(m.checkpointEntries);
    m.rootfsDiffEntries = declared.rootfsDiffEntries.value_or(m.rootfsDiffEntries);
    m.idMapping = declared.idMapping;
    return m;
  }

  std::string finish() const {
    std::string data;
    struct archive* a = archive_write_new();
    archive_write_set_format_pax(a);
    archive_write_open2(a, &data, nullptr, &Tar::append, nullptr, nullptr);
    for (auto& entry : entries) {
      std::string content = entry.manifest ? manifestFor(entry.manifest->first, entry.manifest->second).toJson().dump()
                                           : entry.content;
      archive_entry* e = archive_entry_new();
      archive_entry_set_pathname(e, entry.path.c_str());
      archive_entry_set_filetype(e, entry.type);
      archive_entry_set_perm(e, entry.type == AE_IFDIR ? 0755 : 0644);
      archive_entry_set_size(e, entry.type == AE_IFREG ? static_cast<la_int64_t>(content.size()) : 0);
      archive_entry_set_uid(e, entry.owner);
      archive_entry_set_gid(e, entry.owner);
      if (entry.type == AE_IFLNK) archive_entry_set_symlink(e, entry.link.c_str());
      if (entry.type == AE_IFCHR) archive_entry_set_rdev(e, entry.rdev);
      if (!entry.hardlinkTarget.empty()) {
        archive_entry_set_size(e, 0);
        archive_entry_set_hardlink(e, entry.hardlinkTarget.c_str());
      }
      REQUIRE(archive_write_header(a, e) == ARCHIVE_OK);
      if (!content.empty() && entry.hardlinkTarget.empty()) archive_write_data(a, content.data(), content.size());
      archive_entry_free(e);
    }
    archive_write_close(a);
    archive_write_free(a);
    return data;
  }

 private:
  static la_ssize_t append(struct archive*, void* out, const void* buffer, size_t length) {
    static_cast<std::string*>(out)->append(static_cast<const char*>(buffer), length);
    return static_cast<la_ssize_t>(length);
  }
};

// Reads `tar` into a fresh arena; returns the error message ("" if none)
// after checking nothing landed outside the target.
std::string readHostile(std::string tar, BundleLimits limits = {}, ErrorKind kind = ErrorKind::InvalidInput) {
  Arena arena;
  std::string message;
  try {
    StringInputStream in(std::move(tar));
    readBundle(in, arena.target, limits);
  } catch (const Error& e) {
    message = e.what();
    CHECK(e.kind() == kind);
  }
  arena.checkNothingOutside();
  return message;
}

TEST_CASE("bundle reader accepts the minimal crafted bundle", "[bundle]") {
  REQUIRE_ROOT();
  CHECK(readHostile(Tar().minimal().finish()) == "");
}

TEST_CASE("bundle reader refuses hostile paths", "[bundle]") {
  REQUIRE_ROOT();
  CHECK_THAT(readHostile(Tar().minimal().add("../x", AE_IFREG, "x").finish()),
             Catch::Equals("bundle: entry `../x`: `..` component in path"));
  CHECK_THAT(readHostile(Tar().minimal().add("checkpoint/../../x", AE_IFREG, "x").finish()),
             Catch::Contains("`..` component"));
  CHECK_THAT(readHostile(Tar().minimal().add("/etc/x", AE_IFREG, "x").finish()),
             Catch::Equals("bundle: entry `/etc/x`: absolute path"));
  CHECK_THAT(readHostile(Tar().minimal().add("evil.sh", AE_IFREG, "x").finish()),
             Catch::StartsWith("bundle: entry `evil.sh`: unknown top-level entry"));
  CHECK_THAT(readHostile(Tar().minimal().add("ctr.log/x", AE_IFREG, "x").finish()),
             Catch::Contains("unknown entry"));
}

TEST_CASE("bundle reader refuses symlink escapes and never writes through a symlink", "[bundle]") {
  REQUIRE_ROOT();
  Arena outside;  // only for its path: links below point at it
  std::string parent = outside.parent.path().string();
  CHECK_THAT(readHostile(Tar().minimal().add("checkpoint/l", AE_IFLNK, {}, "../../..").add("checkpoint/l/x", AE_IFREG, "x").finish()),
             Catch::Equals("bundle: entry `checkpoint/l`: symlink target `../../..` leaves checkpoint/"));
  CHECK_THAT(readHostile(Tar().minimal().add("checkpoint/l", AE_IFLNK, {}, "/etc").finish()),
             Catch::Contains("leaves checkpoint/"));
  // Inside rootfs-diff/ an absolute link is fine (it resolves in the
  // container), but nothing may be written through it.
  CHECK_THAT(readHostile(Tar().minimal().add("rootfs-diff", AE_IFDIR).add("rootfs-diff/l", AE_IFLNK, {}, parent.c_str())
                             .add("rootfs-diff/l/evil", AE_IFREG, "x").finish()),
             Catch::Contains("goes through a symlink"));
  CHECK_THAT(readHostile(Tar().minimal().add("rootfs-diff", AE_IFDIR)
                             .add("rootfs-diff/c", AE_IFLNK, {}, (parent + "/canary").c_str())
                             .add("rootfs-diff/c", AE_IFREG, "overwrite").finish()),
             Catch::Equals("bundle: entry `rootfs-diff/c`: duplicate entry"));
  CHECK_THAT(readHostile(Tar().minimal().add("rootfs-diff", AE_IFDIR).add("rootfs-diff/l", AE_IFLNK, {}, parent.c_str())
                             .hardlink("rootfs-diff/h", "rootfs-diff/l/canary").finish()),
             Catch::Contains("goes through a symlink"));
  CHECK_THAT(readHostile(Tar().minimal().add("rootfs-diff", AE_IFDIR).hardlink("rootfs-diff/h", "../canary").finish()),
             Catch::Equals("bundle: entry `rootfs-diff/h`: hardlink target `../canary`: `..` component in path"));
  CHECK_THAT(readHostile(Tar().minimal().add("rootfs-diff", AE_IFDIR).hardlink("rootfs-diff/h", "checkpoint/inventory.img").finish()),
             Catch::Contains("is outside rootfs-diff/"));
  CHECK_THAT(readHostile(Tar().minimal().add("rootfs-diff", AE_IFDIR).add("rootfs-diff/l", AE_IFLNK, {}, parent.c_str())
                             .add("deleted.files", AE_IFREG, R"(["l/canary"])").finish()),
             Catch::Contains("goes through a symlink"));
  CHECK_THAT(readHostile(Tar().minimal().add("rootfs-diff", AE_IFDIR).add("deleted.files", AE_IFREG, R"(["../../canary"])").finish()),
             Catch::Equals("bundle: entry `deleted.files`: path `../../canary`: `..` component in path"));
  CHECK_THAT(readHostile(Tar().minimal().add("deleted.files", AE_IFREG, R"(["/etc/passwd"])").finish()),
             Catch::Contains("absolute path"));
}

TEST_CASE("bundle reader refuses special files", "[bundle]") {
  REQUIRE_ROOT();
  CHECK_THAT(readHostile(Tar().minimal().add("checkpoint/null", AE_IFCHR, {}, nullptr, makedev(1, 3)).finish()),
             Catch::Equals("bundle: entry `checkpoint/null`: device nodes are not allowed in a bundle"));
  // Not even a whiteout-shaped one: whiteouts travel in deleted.files.
  CHECK_THAT(readHostile(Tar().minimal().add("rootfs-diff", AE_IFDIR).add("rootfs-diff/wh", AE_IFCHR).finish()),
             Catch::Contains("device nodes are not allowed"));
  CHECK_THAT(readHostile(Tar().minimal().add("rootfs-diff", AE_IFDIR).add("rootfs-diff/p", AE_IFIFO).finish()),
             Catch::Contains("fifos are not allowed"));
}

TEST_CASE("bundle reader enforces size and count limits", "[bundle]") {
  REQUIRE_ROOT();
  std::string big(2000, 'x');
  BundleLimits limits;
  limits.maxEntryBytes = 1000;
  CHECK_THAT(readHostile(Tar().minimal().add("checkpoint/pages-1.img", AE_IFREG, big).finish(), limits),
             Catch::Equals("bundle: entry `checkpoint/pages-1.img`: size 2000 exceeds the limit of 1000 bytes per entry"));
  limits = {};
  limits.maxTotalBytes = 1500;
  CHECK_THAT(readHostile(Tar().minimal().add("checkpoint/a", AE_IFREG, std::string(1000, 'a'))
                             .add("checkpoint/b", AE_IFREG, std::string(1000, 'b')).finish(), limits),
             Catch::Equals("bundle: manifest.json declares checkpointBytes + rootfsDiffBytes = 2009, over this "
                           "host's limit of 1500 bytes per bundle"));
  limits = {};
  limits.maxEntries = 3;
  CHECK_THAT(readHostile(Tar().minimal().add("checkpoint/a", AE_IFREG, "a").add("checkpoint/b", AE_IFREG, "b").finish(), limits),
             Catch::Equals("bundle: manifest.json declares checkpointEntries + rootfsDiffEntries = 4, over this host's "
                           "limit of 3 entries per bundle"));
  CHECK_THAT(readHostile(Tar().minimal().add("rootfs-diff", AE_IFDIR).add("deleted.files", AE_IFREG, R"(["a"])").finish(), limits),
             Catch::Contains("declares checkpointEntries + rootfsDiffEntries = 4, over"));
  // A manifest that declares few entries does not let more past the host's limit either.
  Declared few;
  few.checkpointEntries = 2;
  Tar many;
  many.minimal(few);
  for (int i = 0; i < 30; ++i) many.add("checkpoint/f" + std::to_string(i), AE_IFREG, "");
  CHECK_THAT(readHostile(many.finish(), limits), Catch::Contains("more entries than the manifest's checkpointEntries (2)"));
}

// Bytes the target's files really take (allocated blocks), after a refusal.
uint64_t bytesOnDisk(const fs::path& dir) {
  uint64_t total = 0;
  for (auto& e : fs::recursive_directory_iterator(dir)) total += static_cast<uint64_t>(lstatOf(e.path()).st_blocks) * 512;
  return total;
}

size_t entriesBelow(const fs::path& dir) {
  if (!fs::exists(dir)) return 0;
  size_t n = 1;
  for (auto& e : fs::recursive_directory_iterator(dir)) {
    (void)e;
    ++n;
  }
  return n;
}

// Like readHostile, but leaves what the refused read wrote for the test to look at.
std::string readInto(const Arena& arena, std::string tar, BundleLimits limits = {},
                     std::function<void(const BundleManifest&)> onManifest = {}) {
  try {
    StringInputStream in(std::move(tar));
    readBundle(in, arena.target, limits, std::move(onManifest));
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST_CASE("bundle reader refuses the first entry past the bytes the manifest declares", "[bundle]") {
  REQUIRE_ROOT();
  Declared small;
  small.checkpointBytes = 9 + 100;  // inventory.img and 100 bytes of pages
  Arena arena;
  CHECK(readInto(arena, Tar().minimal(small).add("checkpoint/pages-1.img", AE_IFREG, randomBytes(10 << 20, 3)).finish()) ==
        "bundle: entry `checkpoint/pages-1.img`: checkpoint/ would hold more than the manifest's checkpointBytes "
        "(109 bytes): this entry has 10485760 after 9");
  CHECK(!fs::exists(arena.target / "checkpoint" / "pages-1.img"));
  CHECK(bytesOnDisk(arena.target) < (64u << 10));
  arena.checkNothingOutside();

  Declared noDiff;
  noDiff.rootfsDiffBytes = 5;
  Arena second;
  CHECK_THAT(readInto(second, Tar().minimal(noDiff).add("rootfs-diff", AE_IFDIR).add("rootfs-diff/a", AE_IFREG, "12345")
                                  .add("rootfs-diff/b", AE_IFREG, "6").finish()),
             Catch::Equals("bundle: entry `rootfs-diff/b`: rootfs-diff/ would hold more than the manifest's "
                           "rootfsDiffBytes (5 bytes): this entry has 1 after 5"));
  CHECK(!fs::exists(second.target / "rootfs-diff" / "b"));
  second.checkNothingOutside();
}

TEST_CASE("bundle reader refuses the first entry past the count the manifest declares", "[bundle]") {
  REQUIRE_ROOT();
  Declared two;
  two.checkpointEntries = 2;  // checkpoint/ and inventory.img
  Tar tar;
  tar.minimal(two);
  for (int i = 0; i < 1000; ++i) tar.add("checkpoint/f" + std::to_string(i), AE_IFREG, "");
  Arena arena;
  CHECK(readInto(arena, tar.finish()) ==
        "bundle: entry `checkpoint/f0`: checkpoint/ has more entries than the manifest's checkpointEntries (2)");
  CHECK(entriesBelow(arena.target / "checkpoint") <= 2 + 1);
  arena.checkNothingOutside();

  // Whiteouts are inodes too: deleted.files counts against rootfsDiffEntries.
  Declared three;
  three.rootfsDiffEntries = 3;
  nlohmann::json deleted = nlohmann::json::array();
  for (int i = 0; i < 1000; ++i) deleted.push_back("w" + std::to_string(i));
  Arena whiteouts;
  CHECK(readInto(whiteouts, Tar().minimal(three).add("rootfs-diff", AE_IFDIR).add("rootfs-diff/a", AE_IFREG, "a")
                                .add("deleted.files", AE_IFREG, deleted.dump()).finish()) ==
        "bundle: entry `deleted.files`: rootfs-diff/ has more entries than the manifest's rootfsDiffEntries (3)");
  CHECK(entriesBelow(whiteouts.target / "rootfs-diff") == 2);
  // Nor may its text be longer than those whiteouts' names could be.
  Declared one;
  one.rootfsDiffEntries = 1;
  CHECK(readHostile(Tar().minimal(one).add("rootfs-diff", AE_IFDIR)
                        .add("deleted.files", AE_IFREG, "[\"" + std::string(20000, 'a') + "\"]").finish()) ==
        "bundle: entry `deleted.files`: larger than 16 bytes (all the room the manifest's rootfsDiffEntries leaves)");
  deleted = nlohmann::json::array({"x", "y"});
  Arena fewer;
  CHECK(readInto(fewer, Tar().minimal(three).add("rootfs-diff", AE_IFDIR).add("rootfs-diff/a", AE_IFREG, "a")
                            .add("deleted.files", AE_IFREG, deleted.dump()).finish()) ==
        "bundle: entry `deleted.files`: rootfs-diff/ has more entries than the manifest's rootfsDiffEntries (3)");
  CHECK(entriesBelow(fewer.target / "rootfs-diff") == 2);
  fewer.checkNothingOutside();
}

TEST_CASE("bundle reader holds a manifest to this host's limits before anything follows it", "[bundle]") {
  REQUIRE_ROOT();
  Declared huge;
  huge.checkpointBytes = 1ull << 50;
  Arena arena;
  CHECK(readInto(arena, Tar().minimal(huge).finish()) ==
        "bundle: manifest.json declares checkpointBytes + rootfsDiffBytes = 1125899906842624, over this host's limit "
        "of 68719476736 bytes per bundle");
  Declared many;
  many.rootfsDiffEntries = 10'000'000;
  CHECK_THAT(readInto(Arena(), Tar().minimal(many).finish()),
             Catch::Contains("declares checkpointEntries + rootfsDiffEntries = 10000002, over this host's limit of 500000"));
  CHECK(entriesBelow(arena.target) == 2);  // the target and manifest.json
  // Beside the two trees, every file has a fixed cap.
  CHECK_THAT(readHostile(Tar().manifest().add("config.dump", AE_IFREG, std::string(2 << 20, ' ')).finish()),
             Catch::Equals("bundle: entry `config.dump`: size 2097152 exceeds the limit of 1048576 bytes for config.dump"));
}

TEST_CASE("import precheck compares the declared sizes with this host's free memory and disk", "[bundle]") {
  REQUIRE_ROOT();
  BundleLimits unlimited;
  unlimited.maxTotalBytes = UINT64_MAX;
  auto precheck = [](bool inMemory) {
    return [inMemory](const BundleManifest& m) {
      precheckImport(m, HostCapacity::measure(fs::temp_directory_path()), inMemory, fs::temp_directory_path());
    };
  };
  Declared petabyte;
  petabyte.checkpointBytes = 1ull << 50;
  Arena arena;
  try {
    StringInputStream in(Tar().minimal(petabyte).finish());
    readBundle(in, arena.target, unlimited, precheck(true));
    FAIL("no error");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::Overloaded);
    CHECK_THAT(e.what(), Catch::StartsWith("bundle declares checkpointBytes = 1125899906842624 (a tmpfs of ") &&
                             Catch::Contains("but this host has MemAvailable = "));
  }
  CHECK(entriesBelow(arena.target) == 2);  // nothing but manifest.json
  arena.checkNothingOutside();

  Declared bigDiff;
  bigDiff.rootfsDiffBytes = 1ull << 50;
  CHECK_THAT(readInto(Arena(), Tar().minimal(bigDiff).finish(), unlimited, precheck(true)),
             Catch::StartsWith("bundle declares rootfsDiffBytes = 1125899906842624 (1073741824 MiB) but " +
                               fs::temp_directory_path().string() + " has ") && Catch::Contains(" bytes free"));
  // Checkpoints on disk: both trees go to the state dir.
  CHECK_THAT(readInto(Arena(), Tar().minimal(petabyte).finish(), unlimited, precheck(false)),
             Catch::StartsWith("bundle declares rootfsDiffBytes + checkpointBytes = 1125899906842624 "));
  CHECK(readInto(Arena(), Tar().minimal().finish(), unlimited, precheck(true)) == "");
}

TEST_CASE("bundle reader fills a checkpoint tmpfs mounted at the manifest, sized from it", "[bundle]") {
  REQUIRE_ROOT();
  SourceTree src;
  Arena arena;
  StringOutputStream sink;
  writeBundle(src.sources, sink);
  StringInputStream in(sink.data());
  fs::path checkpoint = arena.target / "checkpoint";
  TmpfsBounds bounds;
  readBundle(in, arena.target, {}, [&](const BundleManifest& m) {
    bounds = checkpointTmpfsBounds(m);
    mountScratchTmpfs(checkpoint, bounds);
  });
  struct Unmount {
    fs::path dir;
    ~Unmount() { ::umount2(dir.c_str(), MNT_DETACH); }
  } unmount{checkpoint};
  CHECK(isMountPoint(checkpoint));
  CHECK(bounds.inodes == 4 + 16);
  CHECK(bounds.bytes >= src.pages.size() + (16u << 20));
  CHECK(bounds.bytes < src.pages.size() + (17u << 20));
  CHECK(readFile(checkpoint / "pages-1.img") == src.pages);
  // The tmpfs holds no more than its size: a write past it fails.
  std::string filler(1 << 20, 'x');
  Fd fd = openOrFail(checkpoint / "filler", O_WRONLY | O_CREAT, 0600);
  bool full = false;
  for (uint64_t written = 0; written < bounds.bytes + (1u << 20); written += filler.size()) {
    if (::write(fd.get(), filler.data(), filler.size()) < 0) {
      full = errno == ENOSPC;
      break;
    }
  }
  CHECK(full);
}

TEST_CASE("bundle reader refuses wrong structure", "[bundle]") {
  REQUIRE_ROOT();
  CHECK(readHostile(Tar().manifest(7).add("config.dump", AE_IFREG, "{}").finish(), {}, ErrorKind::Unimplemented) ==
        "bundle: format version 7 is not supported (this build reads " + std::to_string(kBundleFormatVersion) + ")");
  CHECK_THAT(readHostile(Tar().add("config.dump", AE_IFREG, "{}").manifest().finish()),
             Catch::Equals("bundle: entry `config.dump`: manifest.json must be the first entry"));
  CHECK_THAT(readHostile(Tar().manifest().add("config.dump", AE_IFREG, "{}").add("spec.dump", AE_IFREG, "{}")
                             .add("checkpoint", AE_IFDIR).add("checkpoint/core.img", AE_IFREG, "core").finish()),
             Catch::Equals("bundle: `checkpoint/inventory.img` is missing"));
  CHECK_THAT(readHostile(Tar().manifest().add("config.dump", AE_IFREG, "{}").finish()),
             Catch::Equals("bundle: `spec.dump` is missing"));
  CHECK_THAT(readHostile(Tar().minimal().add("spec.dump", AE_IFREG, "{}").finish()), Catch::Contains("out of order"));
  CHECK_THAT(readHostile(Tar().minimal().add("checkpoint/inventory.img", AE_IFREG, "again").finish()),
             Catch::Contains("duplicate entry"));
  CHECK_THAT(readHostile(Tar().add("manifest.json", AE_IFREG, "{\"formatVersion\":" + std::to_string(kBundleFormatVersion) + "}").finish()),
             Catch::Contains("missing field"));
  CHECK_THAT(readHostile(Tar().add("manifest.json", AE_IFREG, "not json").finish()), Catch::Contains("manifest.json: not valid JSON"));
  Declared short100;
  short100.rootfsDiffBytes = 100;
  CHECK_THAT(readHostile(Tar().minimal(short100).finish()), Catch::Contains("manifest says 100"));
  CHECK_THAT(readHostile(""), Catch::Contains("bundle: tar stream truncated or corrupt"));
}

TEST_CASE("bundle reader lets the caller refuse at the manifest", "[bundle]") {
  REQUIRE_ROOT();
  Arena arena;
  StringInputStream in(Tar().minimal().finish());
  CHECK_THROWS_WITH(readBundle(in, arena.target, {},
                               [](const BundleManifest&) { fail(ErrorKind::Conflict, "name `web` is taken"); }),
                    "name `web` is taken");
  CHECK(!fs::exists(arena.target / "config.dump"));
  arena.checkNothingOutside();
}

TEST_CASE("bundle reader refuses truncated streams", "[bundle]") {
  REQUIRE_ROOT();
  std::string tar = Tar().minimal().add("checkpoint/pages-1.img", AE_IFREG, randomBytes(1 << 20, 5)).finish();
  SECTION("truncated tar") {
    CHECK_THAT(readHostile(tar.substr(0, tar.size() / 2)), Catch::Contains("truncated"));
  }
  SECTION("truncated zstd") {
    StringOutputStream compressed;
    ZstdOutputStream zstd(compressed);
    zstd.write(tar.data(), tar.size());
    zstd.finish();
    Arena arena;
    StringInputStream in(compressed.data().substr(0, compressed.data().size() / 2));
    ZstdInputStream unzstd(in);
    try {
      readBundle(unzstd, arena.target);
      FAIL("no error");
    } catch (const Error& e) {
      CHECK(e.kind() == ErrorKind::InvalidInput);
      CHECK_THAT(e.what(), Catch::Contains("zstd") && Catch::Contains("truncated"));
    }
    arena.checkNothingOutside();
  }
}

TEST_CASE("bundle reader wants an empty target", "[bundle]") {
  REQUIRE_ROOT();
  Arena arena;
  writeFile(arena.target / "old", "x");
  StringInputStream in(Tar().minimal().finish());
  CHECK_THROWS_WITH(readBundle(in, arena.target), Catch::Contains("is not empty"));
}

TEST_CASE("a user-namespaced container's rootfs-diff travels in its own ids and lands in the mapping's", "[bundle]") {
  REQUIRE_ROOT();
  SourceTree src;
  IdMapping mapping{200000, kIdMappingSize};
  src.sources.manifest.idMapping = mapping;
  auto up = *src.sources.upperDir;
  // As the kernel writes them: host ids. The file of host root (made from
  // outside the container) is nobody's inside it.
  SYSCALL(::chown((up / "home" / "user" / "notes").c_str(), 201000, 201000), "chown");
  SYSCALL(::chown((up / "home" / "user").c_str(), 201000, 201001), "chown");
  SYSCALL(::lchown((up / "usr" / "bin" / "pong").c_str(), 200000, 200000), "lchown");
  SYSCALL(::chown((up / "etc" / "hostname").c_str(), 0, 0), "chown");
  // A file capability set inside the user namespace names its root by host id.
  std::string v3(24, '\0');
  uint32_t words[6] = {0x03000001, 1u << 10, 0, 0, 0, 200000};
  std::memcpy(v3.data(), words, sizeof words);
  SYSCALL(::chown((up / "usr" / "bin" / "ping").c_str(), 200000, 200000), "chown");
  SYSCALL(::setxattr((up / "usr" / "bin" / "ping").c_str(), "security.capability", v3.data(), v3.size(), 0), "setxattr");

  StringOutputStream sink;
  writeBundle(src.sources, sink);
  // What travels: the container's ids.
  TempDir listing(fs::temp_directory_path(), "bundle-ids");
  writeFile(listing.path() / "b.tar", sink.data());
  auto tv = runCapture(SubprocessOptions::of({"tar", "tvf", (listing.path() / "b.tar").string(), "--numeric-owner"})).out;
  CHECK(tv.find("1000/1000") != std::string::npos);             // notes
  CHECK(tv.find("1000/1001") != std::string::npos);             // home/user
  CHECK(tv.find("65534/65534") != std::string::npos);           // etc/hostname, host root's
  CHECK(tv.find("200000") == std::string::npos);
  CHECK(tv.find("201000") == std::string::npos);

  Arena arena;
  StringInputStream in(sink.data());
  auto manifest = readBundle(in, arena.target);
  REQUIRE(manifest.idMapping == mapping);
  auto diff = arena.target / "rootfs-diff";
  CHECK(lstatOf(diff / "home" / "user" / "notes").st_uid == 201000);
  CHECK(lstatOf(diff / "home" / "user").st_gid == 201001);
  CHECK(lstatOf(diff / "usr" / "bin" / "pong").st_uid == 200000);
  CHECK(lstatOf(diff / "etc" / "hostname").st_uid == 200000 + 65534);
  auto cap = xattr(diff / "usr" / "bin" / "ping", "security.capability");
  REQUIRE(cap.size() == 24);
  uint32_t rootId;
  std::memcpy(&rootId, cap.data() + 20, 4);
  CHECK(rootId == 200000);
  arena.checkNothingOutside();
}

TEST_CASE("bundle reader refuses a rootfs-diff owner outside the container's ids", "[bundle]") {
  REQUIRE_ROOT();
  Declared declared;
  declared.idMapping = IdMapping{200000, kIdMappingSize};
  auto tar = [&](la_int64_t owner) {
    Tar t;
    t.minimal(declared).add("rootfs-diff", AE_IFDIR).add("rootfs-diff/f", AE_IFREG, "x").ownedBy(owner);
    return t.finish();
  };
  CHECK(readHostile(tar(65535)) == "");
  CHECK_THAT(readHostile(tar(65536)), Catch::Contains("owner 65536:65536 is outside the container's 65536 ids"));
  CHECK_THAT(readHostile(tar(200000)), Catch::Contains("is outside the container's"));
  // Without a mapping the ids are the host's, as they were.
  declared.idMapping.reset();
  CHECK(readHostile(tar(200000)) == "");
}


TEST_CASE("a file capability without a namespace root is refused for a user-namespaced container", "[bundle]") {
  std::vector<char> v2(kCapability.begin(), kCapability.end());
  auto shift = [](uint32_t id) -> std::optional<uint32_t> { return id + 200000; };
  CHECK_THROWS_WITH(shiftFileCapabilityRoot(v2, shift), Catch::Contains("not version 3"));
  std::vector<char> v3(24, '\0');
  uint32_t words[6] = {0x03000001, 1u << 10, 0, 0, 0, 7};
  std::memcpy(v3.data(), words, sizeof words);
  shiftFileCapabilityRoot(v3, shift);
  uint32_t rootId;
  std::memcpy(&rootId, v3.data() + 20, 4);
  CHECK(rootId == 200007);
  CHECK_THROWS_WITH(shiftFileCapabilityRoot(v3, [](uint32_t) { return std::optional<uint32_t>(); }),
                    Catch::Contains("outside the container's ids"));
}

}  // namespace
}  // namespace migrate
