// checkCriuImages against real checkpoints: a counter run by a real Agent
// (runc + CRIU), checkpointed, its images copied and edited with CRIU's own
// generated classes, the way an attacker on the source host would.
#include "agent/criu-image-check.h"

#include <archive.h>
#include <archive_entry.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <functional>
#include <memory>
#include <thread>

#include "agent/agent.h"
#include "agent/criu-images.h"
#include "common/error.h"
#include "common/files.h"
#include "common/subprocess.h"
#include "tests/support/privileges.h"
#include "tests/support/wait.h"
#include "criu/images/cgroup.pb.h"
#include "criu/images/core.pb.h"
#include "criu/images/fdinfo.pb.h"
#include "criu/images/ghost-file.pb.h"
#include "criu/images/inventory.pb.h"
#include "criu/images/mnt.pb.h"
#include "criu/images/userns.pb.h"

using namespace migrate;
using namespace criupb;
using nlohmann::json;

namespace {

// A container checkpointed by a real agent (left running, so that its
// images stay while the container goes on); removed with the agent's state.
class RealCheckpoint {
 public:
  // restoredOnce: checkpointed, restored, then checkpointed again, as a
  // container that already moved once (CRIU's restore leaves marks, e.g. a
  // time namespace of its own).
  RealCheckpoint(const std::string& user, std::vector<std::string> args = {"/usr/local/bin/counter"},
                 bool restoredOnce = false)
      : state_("/var/tmp", "criu-check-test") {
    AgentOptions options;
    options.stateDir = state_.path();
    options.hostName = "unit";
    agent_ = std::make_unique<Agent>(options);
    agent_->images().import(TEST_IMAGE, "test");
    RunRequest run;
    run.name = "c";
    run.image = "test";
    run.args = std::move(args);
    run.user = user;
    auto c = agent_->run(run);
    try {
      // Checkpointed once it runs its payload: its first line of output
      // (counter's "count 1", memhog's "ready" once its memory is filled).
      auto printed = [&](size_t bytes) {
        return migrate::test::waitUntil([&] { return agent_->logs("c").size() > bytes; }, std::chrono::seconds(60));
      };
      REQUIRE(printed(0));
      if (restoredOnce) {
        agent_->checkpoint("c", CheckpointRequest{false, false});
        size_t before = agent_->logs("c").size();
        agent_->restore("c", RestoreRequest{});
        REQUIRE(printed(before));
      }
      agent_->checkpoint("c", CheckpointRequest{false, true});
      c = agent_->inspect("c");
      images_ = c.paths.checkpoint();
      spec_ = json::parse(readFile(c.paths.spec()));
    } catch (...) {
      // No destructor runs for a half-made fixture: the container goes here.
      agent_->remove("c", true);
      throw;
    }
  }
  ~RealCheckpoint() {
    try {
      agent_->remove("c", true);
    } catch (const std::exception& e) {
      WARN("cleanup: " << e.what());
    }
  }

  const fs::path& images() const { return images_; }
  const json& spec() const { return spec_; }
  Agent& agent() { return *agent_; }

 private:
  TempDir state_;
  std::unique_ptr<Agent> agent_;
  fs::path images_;
  json spec_;
};

// A copy of the images for one test to edit.
class ImagesCopy {
 public:
  explicit ImagesCopy(const fs::path& from) : dir_("/var/tmp", "criu-images") {
    fs::copy(from, dir_.path(), fs::copy_options::recursive);
  }
  fs::path operator/(const std::string& name) const { return dir_.path() / name; }
  const fs::path& path() const { return dir_.path(); }

 private:
  TempDir dir_;
};

template <typename Message>
Message readOne(const fs::path& path, uint32_t magic) {
  CriuImageReader reader(path, magic);
  Message m;
  reader.readOnly(m);
  return m;
}

void editCore(const fs::path& path, const std::function<void(core_entry&)>& edit) {
  auto core = readOne<core_entry>(path, criu::kCoreMagic);
  edit(core);
  writeCriuImage(path, criu::kCoreMagic, {&core});
}

template <typename Message>
std::vector<Message> readAll(const fs::path& path, uint32_t magic) {
  CriuImageReader reader(path, magic);
  std::vector<Message> all;
  Message m;
  while (reader.next(m)) all.push_back(m);
  return all;
}

template <typename Message>
void writeAll(const fs::path& path, uint32_t magic, const std::vector<Message>& all) {
  std::vector<const google::protobuf::MessageLite*> entries;
  for (auto& m : all) entries.push_back(&m);
  writeCriuImage(path, magic, entries);
}

std::vector<mnt_entry> readMounts(const fs::path& path) { return readAll<mnt_entry>(path, criu::kMntsMagic); }
void writeMounts(const fs::path& path, const std::vector<mnt_entry>& mounts) { writeAll(path, criu::kMntsMagic, mounts); }

fs::path onlyImage(const fs::path& dir, const std::string& prefix) {
  for (auto& e : fs::directory_iterator(dir)) {
    if (e.path().filename().string().rfind(prefix, 0) == 0) return e.path();
  }
  FAIL("no " << prefix << "* image in " << dir);
  return {};
}

// The refusal's message, or "" when the images pass.
std::string refusal(const fs::path& dir, const json& spec, std::optional<fs::path> rootfs = std::nullopt) {
  try {
    checkCriuImages(dir, spec, rootfs);
    return "";
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::InvalidInput);
    return e.what();
  }
}

// Appends a device node (or, with `symlinkTarget`, a symlink) to a CRIU
// tmpfs tarball (gzip tar), keeping what it holds.
void addTarEntry(const fs::path& tarball, const std::string& name, mode_t type, unsigned maj, unsigned min,
                 const std::string& symlinkTarget = "") {
  auto original = readFile(tarball);
  std::unique_ptr<archive, decltype(&archive_read_free)> in(archive_read_new(), archive_read_free);
  archive_read_support_filter_gzip(in.get());
  archive_read_support_format_tar(in.get());
  REQUIRE(archive_read_open_memory(in.get(), original.data(), original.size()) == ARCHIVE_OK);
  std::unique_ptr<archive, decltype(&archive_write_free)> out(archive_write_new(), archive_write_free);
  archive_write_add_filter_gzip(out.get());
  archive_write_set_format_gnutar(out.get());
  REQUIRE(archive_write_open_filename(out.get(), tarball.c_str()) == ARCHIVE_OK);
  archive_entry* entry;
  while (archive_read_next_header(in.get(), &entry) == ARCHIVE_OK) {
    archive_write_header(out.get(), entry);
    char buffer[4096];
    la_ssize_t n;
    while ((n = archive_read_data(in.get(), buffer, sizeof buffer)) > 0) archive_write_data(out.get(), buffer, n);
  }
  auto* node = archive_entry_new();
  archive_entry_set_pathname(node, ("./" + name).c_str());
  archive_entry_set_filetype(node, type);
  archive_entry_set_perm(node, 0666);
  archive_entry_set_rdevmajor(node, maj);
  archive_entry_set_rdevminor(node, min);
  if (!symlinkTarget.empty()) archive_entry_set_symlink(node, symlinkTarget.c_str());
  REQUIRE(archive_write_header(out.get(), node) == ARCHIVE_OK);
  archive_entry_free(node);
  REQUIRE(archive_write_close(out.get()) == ARCHIVE_OK);
}

// The tmpfs tarball of the container's /dev (the one holding `null`).
fs::path devTarball(const fs::path& dir) {
  for (auto& e : fs::directory_iterator(dir)) {
    auto name = e.path().filename().string();
    if (name.rfind("tmpfs-dev-", 0) != 0) continue;
    auto listing = runCapture(SubprocessOptions::of({"tar", "tzf", e.path().string()}));
    if (listing.out.find("./null") != std::string::npos) return e.path();
  }
  FAIL("no tmpfs tarball of /dev");
  return {};
}

}  // namespace

TEST_CASE("criu images of a real root container pass, and each widening edit is refused by name") {
  REQUIRE_PRIVILEGES();
  RealCheckpoint real("");
  const json& spec = real.spec();
  ImagesCopy images(real.images());
  auto core = images / "core-1.img";

  SECTION("unchanged") { CHECK(refusal(images.path(), spec) == ""); }

  SECTION("CapEff widened to 0xfeffffff") {
    editCore(core, [](core_entry& c) {
      auto* eff = c.mutable_thread_core()->mutable_creds()->mutable_cap_eff();
      eff->Set(0, 0xfeffffff);
    });
    auto why = refusal(images.path(), spec);
    CHECK_THAT(why, Catch::Contains("criu image `core-1.img`: task 1 CapEff 0xfeffffff exceeds the spec's effective set"));
    CHECK_THAT(why, Catch::Contains("CAP_SYS_ADMIN"));
    CHECK_THAT(why, Catch::Contains("CAP_SYS_MODULE"));
  }
  SECTION("CapPrm widened") {
    editCore(core, [](core_entry& c) { c.mutable_thread_core()->mutable_creds()->mutable_cap_prm()->Set(0, 0xffffffff); });
    CHECK_THAT(refusal(images.path(), spec), Catch::Contains("task 1 CapPrm 0xffffffff exceeds the spec's permitted set"));
  }
  SECTION("CapBnd widened into the high word") {
    editCore(core, [](core_entry& c) { c.mutable_thread_core()->mutable_creds()->mutable_cap_bnd()->Set(1, 0x1ff); });
    CHECK_THAT(refusal(images.path(), spec), Catch::Contains("task 1 CapBnd 0x1ff800425fb exceeds the spec's bounding set"));
  }
  SECTION("CapAmb and CapInh raised") {
    editCore(core, [](core_entry& c) { c.mutable_thread_core()->mutable_creds()->mutable_cap_amb()->Set(0, 1u << 21); });
    CHECK_THAT(refusal(images.path(), spec), Catch::Contains("task 1 CapAmb 0x200000 exceeds the spec's ambient set 0x0 (CAP_SYS_ADMIN)"));
    editCore(core, [](core_entry& c) {
      c.mutable_thread_core()->mutable_creds()->mutable_cap_amb()->Set(0, 0);
      c.mutable_thread_core()->mutable_creds()->mutable_cap_inh()->Set(0, 1u << 17);
    });
    CHECK_THAT(refusal(images.path(), spec), Catch::Contains("task 1 CapInh 0x20000 exceeds the spec's inheritable set 0x0 (CAP_SYS_RAWIO)"));
  }
  SECTION("no_new_privs cleared") {
    editCore(core, [](core_entry& c) { c.mutable_thread_core()->mutable_creds()->set_no_new_privs(0); });
    CHECK_THAT(refusal(images.path(), spec), Catch::Contains("task 1 no_new_privs is off, but the spec sets noNewPrivileges"));
  }
  SECTION("seccomp mode changed") {
    editCore(core, [](core_entry& c) { c.mutable_thread_core()->set_seccomp_mode(static_cast<seccomp_mode>(3)); });
    // protobuf keeps a value the enum lacks aside as an unknown field, where
    // CRIU's protobuf-c would take 3: refused rather than read as "disabled".
    CHECK_THAT(refusal(images.path(), spec), Catch::Contains("criu image `core-1.img`: entry at byte 8 has criupb.thread_core_entry field 11"));
    fs::copy_file(real.images() / "core-1.img", core, fs::copy_options::overwrite_existing);
    editCore(core, [](core_entry& c) { c.mutable_thread_core()->set_seccomp_mode(filter); });
    CHECK_THAT(refusal(images.path(), spec), Catch::Contains("task 1 seccomp filter 0 is not in seccomp.img"));
    editCore(core, [](core_entry& c) { c.mutable_thread_core()->set_seccomp_mode(disabled); });
    json filtered = spec;
    filtered["linux"]["seccomp"] = {{"defaultAction", "SCMP_ACT_ERRNO"}};
    CHECK_THAT(refusal(images.path(), filtered), Catch::Contains("task 1 seccomp mode disabled, but the spec sets a seccomp filter"));
  }
  SECTION("a block device node in the /dev tmpfs tarball") {
    addTarEntry(devTarball(images.path()), "sda", AE_IFBLK, 8, 0);
    CHECK_THAT(refusal(images.path(), spec), Catch::Contains("entry `./sda` is block device 8:0"));
  }
  SECTION("/dev/mem as a character device node") {
    addTarEntry(devTarball(images.path()), "mem", AE_IFCHR, 1, 1);
    CHECK_THAT(refusal(images.path(), spec), Catch::Contains("entry `./mem` is character device 1:1, not one of the default devices"));
  }
  SECTION("a mount of the host's disk") {
    auto path = onlyImage(images.path(), "mountpoints-");
    auto mounts = readMounts(path);
    mnt_entry disk;
    disk.set_fstype(AUTO);
    disk.set_fsname("ext4");
    disk.set_mnt_id(999);
    disk.set_root_dev(makedev(8, 0));
    for (auto& m : mounts) {
      if (m.mountpoint() == "/") disk.set_parent_mnt_id(m.mnt_id());
    }
    disk.set_flags(0);
    disk.set_root("/");
    disk.set_mountpoint("/mnt");
    disk.set_source("/dev/sda");
    disk.set_options("");
    mounts.push_back(disk);
    writeMounts(path, mounts);
    CHECK_THAT(refusal(images.path(), spec),
               Catch::Contains("mount 999 at `/mnt`: ext4 from `/dev/sda` is not a filesystem the spec mounts"));
  }
  SECTION("/proc/sys made writable, or its read-only bind dropped") {
    auto path = onlyImage(images.path(), "mountpoints-");
    auto mounts = readMounts(path);
    for (auto& m : mounts) {
      if (m.mountpoint() == "/proc/sys") m.set_flags(m.flags() & ~MS_RDONLY);
    }
    writeMounts(path, mounts);
    CHECK_THAT(refusal(images.path(), spec), Catch::Contains("at `/proc/sys`: flags"));
    std::erase_if(mounts, [](const mnt_entry& m) { return m.mountpoint() == "/proc/sys"; });
    writeMounts(path, mounts);
    CHECK_THAT(refusal(images.path(), spec), Catch::Contains("`/proc/sys` is masked or read-only in the spec but not covered by a mount"));
  }
  SECTION("a masked path unmasked by a read-only proc bind, a read-only path bound from elsewhere") {
    auto path = onlyImage(images.path(), "mountpoints-");
    auto mounts = readMounts(path);
    auto proc = std::find_if(mounts.begin(), mounts.end(), [](const mnt_entry& m) { return m.mountpoint() == "/proc"; });
    REQUIRE(proc != mounts.end());
    auto original = mounts;
    bool edited = false;
    for (auto& m : mounts) {
      if (m.mountpoint() != "/proc/keys") continue;
      auto parent = m.parent_mnt_id(), id = m.mnt_id();
      m = *proc;
      m.set_mnt_id(id);
      m.set_parent_mnt_id(parent);
      m.set_mountpoint("/proc/keys");
      m.set_root("/keys");
      m.set_flags(m.flags() | MS_RDONLY);
      edited = true;
    }
    REQUIRE(edited);
    writeMounts(path, mounts);
    CHECK_THAT(refusal(images.path(), spec), Catch::Contains("at `/proc/keys`: a masked path must be covered by /dev/null or an empty tmpfs"));
    mounts = original;
    for (auto& m : mounts) {
      if (m.mountpoint() == "/proc/sys") m.set_root("/");
    }
    writeMounts(path, mounts);
    CHECK_THAT(refusal(images.path(), spec), Catch::Contains("at `/proc/sys`: a read-only path must be its own place in proc"));
  }
  SECTION("an external bind the spec does not make") {
    auto path = onlyImage(images.path(), "mountpoints-");
    auto mounts = readMounts(path);
    for (auto& m : mounts) {
      if (m.mountpoint() == "/etc/hosts") m.set_ext_key("/etc/shadow");
    }
    writeMounts(path, mounts);
    CHECK_THAT(refusal(images.path(), spec), Catch::Contains("external mount `/etc/shadow` is not a bind mount of the spec"));
  }
  SECTION("a user namespace the spec does not create") {
    // A target that runs the container in the host's user namespace.
    json hostSpec = spec;
    auto& namespaces = hostSpec["linux"]["namespaces"];
    namespaces.erase(std::remove(namespaces.begin(), namespaces.end(), json{{"type", "user"}}), namespaces.end());
    hostSpec["linux"].erase("uidMappings");
    hostSpec["linux"].erase("gidMappings");
    CHECK_THAT(refusal(images.path(), hostSpec), Catch::Matches(".*userns-[0-9]+\\.img`: holds a user namespace the spec does not create"));
  }
  SECTION("user namespace maps other than the spec's") {
    fs::path userns;
    for (auto& e : fs::directory_iterator(images.path())) {
      if (e.path().filename().string().rfind("userns-", 0) == 0) userns = e.path();
    }
    REQUIRE(!userns.empty());
    auto entry = readOne<userns_entry>(userns, criu::kUsernsMagic);
    REQUIRE(entry.uid_map_size() == 1);
    SECTION("uid 0 mapped to host root") {
      entry.mutable_uid_map(0)->set_lower_first(0);
      writeCriuImage(userns, criu::kUsernsMagic, {&entry});
      CHECK_THAT(refusal(images.path(), spec), Catch::Contains("uid_map [0 0 65536] is not this host's mapping for the container"));
    }
    SECTION("a second gid extent") {
      auto* extra = entry.add_gid_map();
      extra->set_first(70000);
      extra->set_lower_first(0);
      extra->set_count(1);
      writeCriuImage(userns, criu::kUsernsMagic, {&entry});
      CHECK_THAT(refusal(images.path(), spec), Catch::Contains("gid_map"));
    }
    SECTION("a wider uid extent") {
      entry.mutable_uid_map(0)->set_count(1u << 31);
      writeCriuImage(userns, criu::kUsernsMagic, {&entry});
      CHECK_THAT(refusal(images.path(), spec), Catch::Contains("is not this host's mapping"));
    }
  }
  SECTION("a block device as a ghost file") {
    ghost_file_entry ghost;
    ghost.set_uid(0);
    ghost.set_gid(0);
    ghost.set_mode(S_IFBLK | 0600);
    ghost.set_rdev(makedev(8, 0));
    writeCriuImage(images / "ghost-file-1.img", criu::kGhostFileMagic, {&ghost});
    CHECK_THAT(refusal(images.path(), spec), Catch::Contains("criu image `ghost-file-1.img`: ghost file is block device 8:0"));
  }
  SECTION("the device cgroup opened to every device") {
    auto cgroups = readOne<cgroup_entry>(images / "cgroup.img", criu::kCgroupMagic);
    bool edited = false;
    for (auto& controller : *cgroups.mutable_controllers()) {
      for (auto& dir : *controller.mutable_dirs()) {
        for (auto& prop : *dir.mutable_properties()) {
          if (prop.name() == "devices.list") {
            prop.set_value(prop.value() + "\na *:* rwm");
            edited = true;
          }
        }
      }
    }
    REQUIRE(edited);
    writeCriuImage(images / "cgroup.img", criu::kCgroupMagic, {&cgroups});
    CHECK_THAT(refusal(images.path(), spec), Catch::Contains("devices.list allows `a *:* rwm`"));
  }
  SECTION("a symlink into /proc in the /dev tarball") {
    addTarEntry(devTarball(images.path()), "x", AE_IFLNK, 0, 0, "/proc/self/fd");
    CHECK_THAT(refusal(images.path(), spec),
               Catch::Contains("entry `./x` is a symlink to `/proc/self/fd`: only runc's own /dev links"));
  }
  SECTION("an open file named by CRIU's own descriptors, a kernel interface, or through a symlink") {
    auto path = onlyImage(images.path(), "files");
    auto files = readAll<file_entry>(path, criu::kFilesMagic);
    auto reg = std::find_if(files.begin(), files.end(), [](const file_entry& f) { return f.has_reg(); });
    REQUIRE(reg != files.end());
    auto named = [&](const std::string& name, std::optional<fs::path> rootfs = std::nullopt) {
      reg->mutable_reg()->set_name(name);
      writeAll(path, criu::kFilesMagic, files);
      return refusal(images.path(), spec, rootfs);
    };
    CHECK_THAT(named("/proc/self/fd/7"), Catch::Contains("files under /proc and /sys are not restored"));
    CHECK_THAT(named("/proc/kmsg"), Catch::Contains("files under /proc and /sys"));
    CHECK_THAT(named("/dev/fd/7"), Catch::Contains("under /dev only the default devices"));
    CHECK(named("/dev/null") == "");
    TempDir rootfs("/var/tmp", "criu-check-rootfs");
    fs::create_directories(rootfs.path() / "usr/local/bin");
    fs::create_symlink("/proc/self/fd", rootfs.path() / "usr/local/bin/fds");
    CHECK_THAT(named("/usr/local/bin/fds/7", rootfs.path()), Catch::Contains("goes through the symlink `/usr/local/bin/fds`"));
    CHECK(named("/usr/local/bin/counter", rootfs.path()) == "");
  }
  SECTION("a file CRIU does not write for a runc container") {
    writeFileAtomic(images / "ns-files.img", "x");
    CHECK_THAT(refusal(images.path(), spec), Catch::Contains("criu image `ns-files.img`: not a file CRIU writes for a runc container"));
  }
  SECTION("a second user namespace") {
    writeFileAtomic(images / "userns-7.img", "x");
    CHECK_THAT(refusal(images.path(), spec), Catch::Contains("criu image `userns-7.img`: a second user namespace"));
  }
  SECTION("an entry whose size runs past the end of the file") {
    auto bytes = readFile(core);
    bytes[8] = '\xff';
    bytes[9] = '\xff';
    bytes[10] = '\xff';
    bytes[11] = '\x7f';
    writeFileAtomic(core, bytes);
    CHECK_THAT(refusal(images.path(), spec), Catch::Contains("criu image `core-1.img`: entry at byte 8 claims 2147483647 bytes"));
  }
}

TEST_CASE("criu images of a container with a second process and a zombie pass") {
  REQUIRE_PRIVILEGES();
  // `true` exits unreaped (counter never waits): a zombie, dumped with a task
  // core only; `sleep` is a second live task with its own core and ids.
  RealCheckpoint real("", {"sh", "-c", "/bin/true & sleep 1000 & exec /usr/local/bin/counter"});
  size_t cores = 0;
  for (auto& e : fs::directory_iterator(real.images())) cores += e.path().filename().string().rfind("core-", 0) == 0;
  CHECK(cores == 3);
  CHECK(refusal(real.images(), real.spec()) == "");
  // The second task is checked like the first.
  ImagesCopy images(real.images());
  fs::path second;
  for (auto& e : fs::directory_iterator(images.path())) {
    auto name = e.path().filename().string();
    if (name.rfind("ids-", 0) == 0 && name != "ids-1.img") second = images / ("core-" + name.substr(4));
  }
  REQUIRE(!second.empty());
  editCore(second, [](core_entry& c) { c.mutable_thread_core()->mutable_creds()->mutable_cap_bnd()->Set(0, 0xffffffff); });
  CHECK_THAT(refusal(images.path(), real.spec()), Catch::Contains("CapBnd 0xffffffff exceeds the spec's bounding set"));
}

TEST_CASE("criu images of a container restored once and checkpointed again pass") {
  REQUIRE_PRIVILEGES();
  // Seen in the lab: the second move of a container was refused for the time
  // namespace CRIU's first restore had made.
  RealCheckpoint real("", {"/usr/local/bin/counter"}, true);
  CHECK(refusal(real.images(), real.spec()) == "");
  // Still one time namespace for the container.
  ImagesCopy images(real.images());
  auto ids = readOne<task_kobj_ids_entry>(images / "ids-1.img", criu::kIdsMagic);
  auto inventory = readOne<inventory_entry>(images / "inventory.img", criu::kInventoryMagic);
  CHECK(ids.time_ns_id() != inventory.root_ids().time_ns_id());
}

TEST_CASE("criu images of a non-root task: ids stay the spec's user") {
  REQUIRE_PRIVILEGES();
  // A real dump of a task of user 1000 (in the container's user namespace;
  // in the host's, CRIU cannot read its rlimits without CAP_SYS_RESOURCE):
  // CRIU records the ids as the namespace sees them.
  RealCheckpoint real("1000:1000");
  json spec = real.spec();
  CHECK(spec["process"]["user"] == json{{"uid", 1000}, {"gid", 1000}});
  ImagesCopy images(real.images());
  auto core = images / "core-1.img";
  auto creds = readOne<core_entry>(core, criu::kCoreMagic).thread_core().creds();
  CHECK(creds.uid() == 1000);
  CHECK(creds.egid() == 1000);
  CHECK(creds.cap_eff(0) == 0);
  SECTION("as runc leaves it") { CHECK(refusal(images.path(), spec) == ""); }
  SECTION("uid 1000 -> 0") {
    editCore(core, [](core_entry& c) { c.mutable_thread_core()->mutable_creds()->set_uid(0); });
    CHECK_THAT(refusal(images.path(), spec),
               Catch::Contains("task 1 uid/euid/suid/fsuid 0 is not the spec's 1000 (and the spec gives it no CAP_SETUID)"));
  }
  SECTION("egid changed") {
    editCore(core, [](core_entry& c) { c.mutable_thread_core()->mutable_creds()->set_egid(0); });
    CHECK_THAT(refusal(images.path(), spec), Catch::Contains("task 1 gid/egid/sgid/fsgid 0 is not the spec's 1000"));
  }
  SECTION("root's capabilities kept") {
    editCore(core, [](core_entry& c) { c.mutable_thread_core()->mutable_creds()->mutable_cap_eff()->Set(0, 0x800425fb); });
    CHECK(refusal(images.path(), spec) == "");  // the spec's effective set: runc sets it, exec then drops it
    editCore(core, [](core_entry& c) { c.mutable_thread_core()->mutable_creds()->mutable_cap_eff()->Set(0, 0x800425fb | (1u << 21)); });
    CHECK_THAT(refusal(images.path(), spec), Catch::Contains("task 1 CapEff 0x802425fb exceeds the spec's effective set 0x800425fb (CAP_SYS_ADMIN)"));
  }
  SECTION("securebits set without CAP_SETPCAP") {
    editCore(core, [](core_entry& c) { c.mutable_thread_core()->mutable_creds()->set_secbits(0x10); });
    CHECK_THAT(refusal(images.path(), spec), Catch::Contains("task 1 securebits 0x10 set, but the spec gives it no CAP_SETPCAP"));
  }
}

TEST_CASE("the check of a 256 MiB checkpoint does not read its pages") {
  REQUIRE_PRIVILEGES();
  // memhog fills its memory before it says "ready", which the fixture waits for.
  RealCheckpoint real("", {"/usr/local/bin/memhog", "256", "random"});
  REQUIRE(real.agent().logs("c").find("ready") != std::string::npos);
  uint64_t pages = 0;
  for (auto& e : fs::directory_iterator(real.images())) {
    if (e.path().filename().string().rfind("pages-", 0) == 0) pages += fs::file_size(e.path());
  }
  CHECK(pages >= (256ull << 20));
  auto start = std::chrono::steady_clock::now();
  checkCriuImages(real.images(), real.spec());
  auto ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  WARN("checkCriuImages on a checkpoint with " << (pages >> 20) << " MiB of pages: " << ms << " ms");
  CHECK(ms < 500);
}
