#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <random>
#include <thread>

#include "agent/bundle-reader.h"
#include "agent/bundle-writer.h"
#include "agent/rootfs-diff.h"
#include "common/error.h"
#include "common/files.h"
#include "common/hash-stream.h"
#include "common/syscall.h"
#include "common/zstd-stream.h"

namespace migrate {
namespace {

// Bundles carry ownership, trusted.* xattrs and whiteouts: only root can
// make or restore those. Catch2 v2 has no SKIP, so say why and return.
#define REQUIRE_ROOT()                                              \
  if (::geteuid() != 0) {                                           \
    WARN("skipped: needs root (chown, trusted.* xattrs, mknod)");   \
    return;                                                         \
  }

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
    sources.manifest.containerId = "0123abcd";
    sources.manifest.imageDigest = "sha256:feed";
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

  CHECK(readFile(out / "config.dump") == R"({"name":"web"})");
  CHECK(readFile(out / "spec.dump") == R"({"ociVersion":"1.0.2"})");
  CHECK(readFile(out / "network.status") == "[]");
  CHECK(readFile(out / "ctr.log") == "hello from the container\n");
  CHECK(!fs::exists(out / "stats-dump"));
  CHECK(BundleManifest::fromJson(nlohmann::json::parse(readFile(out / "manifest.json"))).containerId == "0123abcd");

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

struct Tar {
  struct archive* a = archive_write_new();
  std::string data;

  Tar() {
    archive_write_set_format_pax(a);
    archive_write_open2(a, this, nullptr, &Tar::append, nullptr, nullptr);
  }
  ~Tar() { archive_write_free(a); }
  static la_ssize_t append(struct archive*, void* self, const void* buffer, size_t length) {
    static_cast<Tar*>(self)->data.append(static_cast<const char*>(buffer), length);
    return static_cast<la_ssize_t>(length);
  }
  Tar& add(const std::string& path, mode_t type, std::string_view content = {}, const char* link = nullptr,
           dev_t rdev = 0) {
    archive_entry* e = archive_entry_new();
    archive_entry_set_pathname(e, path.c_str());
    archive_entry_set_filetype(e, type);
    archive_entry_set_perm(e, type == AE_IFDIR ? 0755 : 0644);
    archive_entry_set_size(e, type == AE_IFREG ? static_cast<la_int64_t>(content.size()) : 0);
    if (type == AE_IFLNK) archive_entry_set_symlink(e, link);
    if (type == AE_IFCHR) archive_entry_set_rdev(e, rdev);
    REQUIRE(archive_write_header(a, e) == ARCHIVE_OK);
    if (!content.empty()) archive_write_data(a, content.data(), content.size());
    archive_entry_free(e);
    return *this;
  }
  Tar& hardlink(const std::string& path, const std::string& target) {
    archive_entry* e = archive_entry_new();
    archive_entry_set_pathname(e, path.c_str());
    archive_entry_set_filetype(e, AE_IFREG);
    archive_entry_set_perm(e, 0644);
    archive_entry_set_size(e, 0);
    archive_entry_set_hardlink(e, target.c_str());
    REQUIRE(archive_write_header(a, e) == ARCHIVE_OK);
    archive_entry_free(e);
    return *this;
  }
  Tar& manifest(int version = kBundleFormatVersion, uint64_t checkpointBytes = 9, uint64_t rootfsDiffBytes = 0) {
    BundleManifest m;
    m.formatVersion = version;
    m.containerName = "web";
    m.checkpointBytes = checkpointBytes;
    m.rootfsDiffBytes = rootfsDiffBytes;
    return add("manifest.json", AE_IFREG, m.toJson().dump());
  }
  // Everything a minimal valid bundle has up to checkpoint/inventory.img.
  Tar& minimal(uint64_t rootfsDiffBytes = 0) {
    manifest(kBundleFormatVersion, 9, rootfsDiffBytes);
    add("config.dump", AE_IFREG, "{}");
    add("spec.dump", AE_IFREG, "{}");
    add("checkpoint", AE_IFDIR);
    return add("checkpoint/inventory.img", AE_IFREG, "inventory");
  }
  std::string finish() {
    archive_write_close(a);
    return data;
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
             Catch::Contains("exceeds its limit of 1500 bytes"));
  limits = {};
  limits.maxEntries = 5;
  CHECK_THAT(readHostile(Tar().minimal().add("checkpoint/a", AE_IFREG, "a").finish(), limits),
             Catch::Contains("more than 5 entries"));
  CHECK_THAT(readHostile(Tar().minimal().add("rootfs-diff", AE_IFDIR).add("deleted.files", AE_IFREG, R"(["a"])").finish(), limits),
             Catch::Contains("more than 5 entries"));
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
  CHECK_THAT(readHostile(Tar().add("manifest.json", AE_IFREG, "not json").finish()), Catch::Contains("not a JSON object"));
  CHECK_THAT(readHostile(Tar().minimal(100).finish()), Catch::Contains("manifest says 100"));
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

}  // namespace
}  // namespace migrate
