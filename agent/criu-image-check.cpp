#include "agent/criu-image-check.h"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <algorithm>
#include <array>
#include <map>
#include <memory>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <tuple>

#include "agent/criu-images.h"
#include "common/error.h"
#include "common/fd.h"
#include "common/files.h"
#include "criu/images/cgroup.pb.h"
#include "criu/images/core.pb.h"
#include "criu/images/fdinfo.pb.h"
#include "criu/images/ghost-file.pb.h"
#include "criu/images/inventory.pb.h"
#include "criu/images/mnt.pb.h"
#include "criu/images/pstree.pb.h"
#include "criu/images/regfile.pb.h"
#include "criu/images/seccomp.pb.h"
#include "criu/images/userns.pb.h"

namespace migrate {

using nlohmann::json;
using namespace ::criupb;  // CRIU's image messages (agent/CMakeLists.txt)

namespace {

constexpr uint32_t kRegFilesMagic = 0x50363636;  // reg-files.img, the pre-files.img layout

[[noreturn]] void refuse(const std::string& image, const std::string& what) {
  fail(ErrorKind::InvalidInput, "criu image `" + image + "`: " + what);
}

std::string hex(uint64_t value) {
  std::ostringstream out;
  out << "0x" << std::hex << value;
  return out.str();
}

// ---- what the spec allows ---------------------------------------------------

// <linux/capability.h>, by bit.
const std::array<const char*, 41> kCapNames = {
    "CAP_CHOWN",        "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER",          "CAP_FSETID",
    "CAP_KILL",         "CAP_SETGID",       "CAP_SETUID",          "CAP_SETPCAP",         "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN",  "CAP_NET_RAW",         "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",    "CAP_SYS_MODULE",   "CAP_SYS_RAWIO",       "CAP_SYS_CHROOT",      "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",    "CAP_SYS_ADMIN",    "CAP_SYS_BOOT",        "CAP_SYS_NICE",        "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",     "CAP_SYS_TTY_CONFIG", "CAP_MKNOD",         "CAP_LEASE",           "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL", "CAP_SETFCAP",     "CAP_MAC_OVERRIDE",    "CAP_MAC_ADMIN",       "CAP_SYSLOG",
    "CAP_WAKE_ALARM",   "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",     "CAP_PERFMON",         "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE"};
constexpr int kCapSetgid = 6, kCapSetuid = 7, kCapSetpcap = 8;
constexpr uint32_t kKnownSecurebits = 0xff;  // SECBIT_NOROOT .. SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED

uint64_t capBit(int cap) { return uint64_t{1} << cap; }

std::string capList(uint64_t mask) {
  std::string out;
  for (int bit = 0; bit < 64; ++bit) {
    if (!(mask & capBit(bit))) continue;
    if (!out.empty()) out += ", ";
    out += bit < static_cast<int>(kCapNames.size()) ? kCapNames[bit] : "cap " + std::to_string(bit);
  }
  return out;
}

uint64_t capMask(const json& names) {
  uint64_t mask = 0;
  if (!names.is_array()) return 0;
  for (auto& name : names) {
    auto at = std::find(kCapNames.begin(), kCapNames.end(), name.get<std::string>());
    if (at == kCapNames.end()) fail(ErrorKind::InvalidInput, "spec: unknown capability `" + name.get<std::string>() + "`");
    mask |= capBit(static_cast<int>(at - kCapNames.begin()));
  }
  return mask;
}

struct Device {
  char type;  // 'c' or 'b'
  uint32_t major, minor;
};

// Kernel namespace kinds as the spec names them, in task_kobj_ids_entry order.
enum class NsKind { Pid, Net, Ipc, Uts, Mnt, User, Cgroup, Time };
const std::map<std::string, NsKind> kSpecNamespaces = {
    {"pid", NsKind::Pid},   {"network", NsKind::Net}, {"ipc", NsKind::Ipc},       {"uts", NsKind::Uts},
    {"mount", NsKind::Mnt}, {"user", NsKind::User},   {"cgroup", NsKind::Cgroup}, {"time", NsKind::Time}};
const char* nsName(NsKind kind) {
  switch (kind) {
    case NsKind::Pid: return "pid";
    case NsKind::Net: return "network";
    case NsKind::Ipc: return "ipc";
    case NsKind::Uts: return "uts";
    case NsKind::Mnt: return "mount";
    case NsKind::User: return "user";
    case NsKind::Cgroup: return "cgroup";
    case NsKind::Time: return "time";
  }
  return "?";
}

std::optional<uint32_t> nsId(const task_kobj_ids_entry& ids, NsKind kind) {
  switch (kind) {
    case NsKind::Pid: return ids.has_pid_ns_id() ? std::optional(ids.pid_ns_id()) : std::nullopt;
    case NsKind::Net: return ids.has_net_ns_id() ? std::optional(ids.net_ns_id()) : std::nullopt;
    case NsKind::Ipc: return ids.has_ipc_ns_id() ? std::optional(ids.ipc_ns_id()) : std::nullopt;
    case NsKind::Uts: return ids.has_uts_ns_id() ? std::optional(ids.uts_ns_id()) : std::nullopt;
    case NsKind::Mnt: return ids.has_mnt_ns_id() ? std::optional(ids.mnt_ns_id()) : std::nullopt;
    case NsKind::User: return ids.has_user_ns_id() ? std::optional(ids.user_ns_id()) : std::nullopt;
    case NsKind::Cgroup: return ids.has_cgroup_ns_id() ? std::optional(ids.cgroup_ns_id()) : std::nullopt;
    case NsKind::Time: return ids.has_time_ns_id() ? std::optional(ids.time_ns_id()) : std::nullopt;
  }
  return std::nullopt;
}
constexpr std::array<NsKind, 8> kNsKinds = {NsKind::Pid, NsKind::Net,  NsKind::Ipc,    NsKind::Uts,
                                           NsKind::Mnt, NsKind::User, NsKind::Cgroup, NsKind::Time};

// The spec mount types a CRIU fstype can come from (images/mnt.proto).
const std::map<std::string, uint32_t> kSpecFstypes = {
    {"proc", PROC}, {"sysfs", SYSFS}, {"tmpfs", TMPFS}, {"devpts", DEVPTS},
    {"mqueue", MQUEUE}, {"cgroup", CGROUP}, {"cgroup2", CGROUP2}};

// What the generated spec lets the restored tasks be and see.
struct SpecPolicy {
  uint32_t uid = 0, gid = 0;
  std::set<uint32_t> groups;  // additionalGids
  uint64_t inheritable = 0, permitted = 0, effective = 0, bounding = 0, ambient = 0;
  bool noNewPrivileges = false;
  bool terminal = false;
  bool seccomp = false;
  std::string lsmLabel;
  std::set<NsKind> namespaces;
  // linux.uidMappings/gidMappings as "containerID hostID size" lines.
  std::vector<std::string> uidMap, gidMap;
  std::set<std::string> maskedPaths, readonlyPaths;
  std::map<std::string, json> mounts;               // destination -> spec mount
  std::set<std::string> externalKeys;               // runc's ext-mount-map keys at restore
  std::map<uint32_t, std::set<std::string>> sources;  // CRIU fstype -> allowed mount sources
  std::vector<Device> devices;                      // OCI default set + linux.devices

  // runc applies the spec's sets, then execs the process. Exec gives root
  // (or anyone without no_new_privs: setuid binaries, file capabilities) the
  // bounding set; under no_new_privs a non-root process keeps only the
  // ambient set (capabilities(7), "Transformation of capabilities during execve()").
  bool rootReachable() const { return uid == 0 || !noNewPrivileges; }
  uint64_t held() const { return rootReachable() ? permitted | bounding | inheritable | ambient : ambient; }
  uint64_t allowedPermitted() const { return permitted | (rootReachable() ? bounding : 0); }
  uint64_t allowedEffective() const { return effective | (rootReachable() ? bounding : 0); }
  bool mayChangeUids() const { return held() & capBit(kCapSetuid); }
  bool mayChangeGids() const { return held() & capBit(kCapSetgid); }

  bool deviceAllowed(char type, uint32_t major, uint32_t minor) const {
    if (type == 'c' && major >= 136 && major <= 143) return true;  // pts (UNIX98_PTY_MAJOR..+7)
    for (auto& d : devices) {
      if (d.type == type && d.major == major && d.minor == minor) return true;
    }
    return false;
  }

  static SpecPolicy fromSpec(const json& spec);
};

bool isBind(const json& mount) {
  if (mount.value("type", "") == "bind") return true;
  for (auto& o : mount.value("options", json::array())) {
    if (o == "bind" || o == "rbind") return true;
  }
  return false;
}

SpecPolicy SpecPolicy::fromSpec(const json& spec) {
  SpecPolicy p;
  auto process = spec.value("process", json::object());
  auto user = process.value("user", json::object());
  p.uid = user.value("uid", 0u);
  p.gid = user.value("gid", 0u);
  for (auto& g : user.value("additionalGids", json::array())) p.groups.insert(g.get<uint32_t>());
  auto caps = process.value("capabilities", json::object());
  p.inheritable = capMask(caps.value("inheritable", json::array()));
  p.permitted = capMask(caps.value("permitted", json::array()));
  p.effective = capMask(caps.value("effective", json::array()));
  p.bounding = capMask(caps.value("bounding", json::array()));
  p.ambient = capMask(caps.value("ambient", json::array()));
  p.noNewPrivileges = process.value("noNewPrivileges", false);
  p.terminal = process.value("terminal", false);
  p.lsmLabel = process.value("selinuxLabel", process.value("apparmorProfile", ""));
  auto linuxSection = spec.value("linux", json::object());
  p.seccomp = linuxSection.contains("seccomp") && !linuxSection["seccomp"].is_null();
  for (auto& ns : linuxSection.value("namespaces", json::array())) {
    auto kind = kSpecNamespaces.find(ns.value("type", ""));
    if (kind == kSpecNamespaces.end()) fail(ErrorKind::InvalidInput, "spec: unknown namespace `" + ns.value("type", "") + "`");
    p.namespaces.insert(kind->second);
  }
  auto extents = [](const json& list) {
    std::vector<std::string> out;
    for (auto& m : list) {
      out.push_back(std::to_string(m.value("containerID", 0u)) + " " + std::to_string(m.value("hostID", 0u)) + " " +
                    std::to_string(m.value("size", 0u)));
    }
    return out;
  };
  p.uidMap = extents(linuxSection.value("uidMappings", json::array()));
  p.gidMap = extents(linuxSection.value("gidMappings", json::array()));
  for (auto& path : linuxSection.value("maskedPaths", json::array())) p.maskedPaths.insert(path.get<std::string>());
  for (auto& path : linuxSection.value("readonlyPaths", json::array())) p.readonlyPaths.insert(path.get<std::string>());
  for (auto& m : spec.value("mounts", json::array())) {
    auto destination = m.value("destination", "");
    p.mounts[destination] = m;
    if (isBind(m)) {
      // runc restore: one --ext-mount-map per bind mount, keyed by its destination.
      p.externalKeys.insert(destination);
      continue;
    }
    auto fstype = kSpecFstypes.find(m.value("type", ""));
    if (fstype != kSpecFstypes.end()) p.sources[fstype->second].insert(m.value("source", ""));
  }
  if (!p.maskedPaths.empty()) {
    // runc masks a file with a bind of /dev/null (external, key /dev/null)
    // and a directory with a read-only tmpfs.
    p.externalKeys.insert("/dev/null");
    p.sources[TMPFS].insert("tmpfs");
  }
  // The OCI default devices (runtime-spec config-linux.md "Default Devices").
  p.devices = {{'c', 1, 3}, {'c', 1, 5}, {'c', 1, 7}, {'c', 1, 8}, {'c', 1, 9},
               {'c', 5, 0}, {'c', 5, 1}, {'c', 5, 2}};
  if (p.namespaces.count(NsKind::User)) {
    // In a user namespace runc cannot mknod: it binds the host's node of
    // each default device instead, and gives CRIU the same at restore (one
    // --ext-mount-map per device, keyed by its path).
    for (auto path : {"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty"}) {
      p.externalKeys.insert(path);
    }
  }
  for (auto& d : linuxSection.value("devices", json::array())) {
    auto type = d.value("type", "c");
    p.devices.push_back({type == "b" ? 'b' : 'c', d.value("major", 0u), d.value("minor", 0u)});
  }
  return p;
}

// ---- names ------------------------------------------------------------------

enum class ImageKind {
  Inventory, Pstree, Core, Ids, Mounts, Files, RegFiles, Ghost, Tmpfs, Cgroup, Seccomp,
  NsImage,  // an image of one namespace's contents: must be a kind the spec creates
  Other,    // CRIU writes it for a runc container; nothing in it reaches beyond the container
};

struct NamePattern {
  std::regex pattern;
  ImageKind kind;
  std::optional<NsKind> ns;
};

// What CRIU 4.2 writes for a runc container (criu/image-desc.c), and runc's
// descriptors.json. Not here, so refused: creds-N (pre-3.x credentials, read
// only when core-N lacks them), ns-files, ext-files, tunfile,
// autofs-N, binfmt-misc, bpfmap-*, apparmor, and anything unknown.
const std::vector<NamePattern>& namePatterns() {
  static const std::vector<NamePattern> patterns = [] {
    std::vector<NamePattern> p;
    auto add = [&p](const char* re, ImageKind kind, std::optional<NsKind> ns = std::nullopt) {
      p.push_back({std::regex(re), kind, ns});
    };
    add("inventory\\.img", ImageKind::Inventory);
    add("pstree\\.img", ImageKind::Pstree);
    add("core-[0-9]+\\.img", ImageKind::Core);
    add("ids-[0-9]+\\.img", ImageKind::Ids);
    add("mountpoints-[0-9]+\\.img", ImageKind::Mounts);
    add("files\\.img", ImageKind::Files);
    add("reg-files\\.img", ImageKind::RegFiles);
    add("ghost-file-[0-9a-f]+\\.img", ImageKind::Ghost);
    add("tmpfs-(dev-)?[0-9]+\\.tar\\.gz\\.img", ImageKind::Tmpfs);
    add("cgroup\\.img", ImageKind::Cgroup);
    add("seccomp\\.img", ImageKind::Seccomp);
    add("(utsns)-[0-9]+\\.img", ImageKind::NsImage, NsKind::Uts);
    add("userns-[0-9]+\\.img", ImageKind::NsImage, NsKind::User);
    add("ipcns-(var|shm|msg|sem)-[0-9]+\\.img", ImageKind::NsImage, NsKind::Ipc);
    add("pidns-[0-9]+\\.img", ImageKind::NsImage, NsKind::Pid);
    add("(netns|netdev|ifaddr|route|route6|rule|iptables|ip6tables|nftables|netns-ct|netns-exp)-[0-9]+\\.img",
        ImageKind::NsImage, NsKind::Net);
    add("timens-[0-9]+\\.img", ImageKind::Other);  // clock offsets; timens-0 is written without a time namespace
    add("(fdinfo|mm|pagemap|pagemap-shmem|pages|fs|sigacts|itimers|posix-timers|signal-s|signal-p|rlimit)-[0-9]+\\.img",
        ImageKind::Other);
    add("tcp-stream-[0-9a-f]+\\.img", ImageKind::Other);
    add("(inetsk|unixsk|packetsk|netlinksk|sk-queues|pipes|pipes-data|fifo|fifo-data|eventfd|eventpoll|"
        "eventpoll-tfd|signalfd|timerfd|inotify|inotify-wd|fanotify|fanotify-mark|remap-fpath|memfd|filelocks|"
        "tty|tty-info|tty-data|pidfd|cpuinfo|irmap-cache)\\.img",
        ImageKind::Other);
    add("stats-(dump|restore)", ImageKind::Other);
    add("descriptors\\.json", ImageKind::Other);  // runc: the init's stdio fds
    return p;
  }();
  return patterns;
}

const NamePattern* classify(const std::string& name) {
  for (auto& p : namePatterns()) {
    if (std::regex_match(name, p.pattern)) return &p;
  }
  return nullptr;
}

bool hasDotDot(const std::string& path) {
  for (auto& part : fs::path(path)) {
    if (part == "..") return true;
  }
  return false;
}

uint32_t numberIn(const std::string& name) {
  auto begin = name.find_first_of("0123456789");
  return static_cast<uint32_t>(std::stoul(name.substr(begin)));
}

// The symlinks runc makes in a container's /dev (libcontainer's default links).
bool isRuncDevLink(const std::string& link, const std::string& target) {
  static const std::map<std::string, std::string> kLinks = {
      {"fd", "/proc/self/fd"},       {"stdin", "/proc/self/fd/0"}, {"stdout", "/proc/self/fd/1"},
      {"stderr", "/proc/self/fd/2"}, {"ptmx", "pts/ptmx"},         {"core", "/proc/kcore"}};
  auto it = kLinks.find(link);
  return it != kLinks.end() && it->second == target;
}

// /dev paths an open file may have: the OCI default devices and the
// filesystems the spec mounts under /dev.
bool isDevicePathAllowed(const std::string& path) {
  static const std::set<std::string> kDevices = {"/dev/null", "/dev/zero",    "/dev/full", "/dev/random",
                                                 "/dev/urandom", "/dev/tty", "/dev/console", "/dev/ptmx"};
  if (kDevices.count(path)) return true;
  for (auto dir : {"/dev/pts/", "/dev/shm/", "/dev/mqueue/"}) {
    if (path.rfind(dir, 0) == 0 && path.size() > std::string(dir).size()) return true;
  }
  return false;
}

// ---- the checks -------------------------------------------------------------

class ImageChecker {
 public:
  ImageChecker(const fs::path& dir, const SpecPolicy& policy, std::optional<fs::path> rootfs)
      : dir_(dir), policy_(policy), rootfs_(std::move(rootfs)) {}

  void run() {
    listImages();
    checkInventory();
    checkTasks();
    checkNamespaces();
    checkUserNamespace();
    for (auto& name : byKind_[ImageKind::Mounts]) checkMounts(name);
    for (auto& name : byKind_[ImageKind::Tmpfs]) checkTmpfsTarball(name);
    for (auto& name : byKind_[ImageKind::Ghost]) checkGhostFile(name);
    for (auto& name : byKind_[ImageKind::Files]) checkOpenFiles(name, false);
    for (auto& name : byKind_[ImageKind::RegFiles]) checkOpenFiles(name, true);
    for (auto& name : byKind_[ImageKind::Cgroup]) checkDeviceCgroup(name);
  }

 private:
  void listImages() {
    for (auto& entry : fs::directory_iterator(dir_)) {
      auto name = entry.path().filename().string();
      if (!entry.is_regular_file(ec_) || entry.is_symlink(ec_)) refuse(name, "not a regular file");
      auto* pattern = classify(name);
      if (!pattern) refuse(name, "not a file CRIU writes for a runc container");
      if (pattern->kind == ImageKind::NsImage && !policy_.namespaces.count(*pattern->ns)) {
        refuse(name, std::string("holds a ") + nsName(*pattern->ns) + " namespace the spec does not create");
      }
      byKind_[pattern->kind].push_back(name);
    }
    for (auto& list : byKind_) std::sort(list.second.begin(), list.second.end());
    if (byKind_[ImageKind::Inventory].empty()) refuse("inventory.img", "missing");
    if (byKind_[ImageKind::Pstree].empty()) refuse("pstree.img", "missing");
  }

  void checkInventory() {
    CriuImageReader reader(dir_ / "inventory.img", criu::kInventoryMagic);
    inventory_entry inventory;
    reader.readOnly(inventory);
    if (!inventory.has_root_ids()) refuse(reader.name(), "no root_ids: cannot tell the container's namespaces from the host's");
    rootIds_ = inventory.root_ids();
    if (inventory.has_plugins_entry() && inventory.plugins_entry().plugins_size() > 0) {
      refuse(reader.name(), "names CRIU plugins (" + inventory.plugins_entry().plugins(0) + "); none are used here");
    }
  }

  void checkTasks() {
    CriuImageReader pstree(dir_ / "pstree.img", criu::kPstreeMagic);
    pstree_entry task;
    std::map<uint32_t, std::set<uint32_t>> threadsOf;
    while (pstree.next(task)) {
      tasks_.push_back(task.pid());
      threadsOf[task.pid()] = {task.threads().begin(), task.threads().end()};
      threadsOf[task.pid()].insert(task.pid());
    }
    if (tasks_.empty()) refuse(pstree.name(), "no task");
    uint32_t seccompFilters = seccompFilterCount();
    for (auto& name : byKind_[ImageKind::Core]) checkCore(name, seccompFilters);
    // Every task and live thread CRIU restores has a core, so none goes unchecked.
    for (auto& [pid, threads] : threadsOf) {
      if (zombies_.count(pid)) continue;  // a zombie lists thread 0, and has its task core only
      for (auto tid : threads) {
        if (!fs::exists(dir_ / ("core-" + std::to_string(tid) + ".img"))) {
          refuse("core-" + std::to_string(tid) + ".img",
                 "missing for thread " + std::to_string(tid) + " of task " + std::to_string(pid) + " in pstree.img");
        }
      }
    }
  }

  uint32_t seccompFilterCount() {
    if (byKind_[ImageKind::Seccomp].empty()) return 0;
    CriuImageReader reader(dir_ / "seccomp.img", criu::kSeccompMagic);
    seccomp_entry entry;
    reader.readOnly(entry);
    return static_cast<uint32_t>(entry.seccomp_filters_size());
  }

  void checkCore(const std::string& name, uint32_t seccompFilters) {
    CriuImageReader reader(dir_ / name, criu::kCoreMagic);
    core_entry core;
    reader.readOnly(core);
    std::string task = "task " + std::to_string(numberIn(name));
    if (core.has_ids()) idsFromCore_[numberIn(name)] = core.ids();
    // A zombie is dumped with its task core only (criu/cr-dump.c
    // dump_one_zombie) and restored dead: no credentials or ids to check.
    // CRIU takes the state from the task's own core (a pstree pid), not a thread's.
    constexpr uint32_t kTaskDead = 2;  // compel/include/uapi/task-state.h
    bool isTask = std::find(tasks_.begin(), tasks_.end(), numberIn(name)) != tasks_.end();
    bool zombie = isTask && core.has_tc() && core.tc().task_state() == kTaskDead;
    if (zombie) zombies_.insert(numberIn(name));
    if (zombie && !core.has_thread_core()) return;
    if (!core.has_thread_core() || !core.thread_core().has_creds()) {
      // CRIU would then take creds-N.img, which is not let through.
      refuse(name, task + " has no credentials in its thread_core");
    }
    checkCreds(name, task, core.thread_core().creds());

    // CRIU moves the per-task (old) seccomp fields into the thread's.
    uint32_t mode = core.thread_core().has_seccomp_mode() ? core.thread_core().seccomp_mode() : 0;
    uint32_t filter = core.thread_core().seccomp_filter();
    if (core.has_tc() && core.tc().has_old_seccomp_mode()) mode = core.tc().old_seccomp_mode();
    if (core.has_tc() && core.tc().has_old_seccomp_filter()) filter = core.tc().old_seccomp_filter();
    if (mode > 2) refuse(name, task + " seccomp mode " + std::to_string(mode) + " is not one of disabled, strict, filter");
    if (policy_.seccomp && mode != 2) {
      refuse(name, task + " seccomp mode " + std::string(mode == 0 ? "disabled" : "strict") +
                       ", but the spec sets a seccomp filter");
    }
    if (mode == 2 && filter >= seccompFilters) {
      refuse(name, task + " seccomp filter " + std::to_string(filter) + " is not in seccomp.img (" +
                       std::to_string(seccompFilters) + " filters)");
    }
    // TODO(security): compare the filter chain with the spec's linux.seccomp
    // (needs the BPF runc's libseccomp makes from it); a task can only add filters.
  }

  void checkCreds(const std::string& name, const std::string& task, const creds_entry& creds) {
    auto ids = [&](const char* what, std::initializer_list<uint32_t> values, uint32_t spec, bool mayChange,
                   const char* cap) {
      if (mayChange) return;
      for (auto v : values) {
        if (v != spec) {
          refuse(name, task + " " + what + " " + std::to_string(v) + " is not the spec's " + std::to_string(spec) +
                           " (and the spec gives it no " + cap + ")");
        }
      }
    };
    ids("uid/euid/suid/fsuid", {creds.uid(), creds.euid(), creds.suid(), creds.fsuid()}, policy_.uid,
        policy_.mayChangeUids(), "CAP_SETUID");
    ids("gid/egid/sgid/fsgid", {creds.gid(), creds.egid(), creds.sgid(), creds.fsgid()}, policy_.gid,
        policy_.mayChangeGids(), "CAP_SETGID");
    if (!policy_.mayChangeGids()) {
      for (auto g : creds.groups()) {
        if (!policy_.groups.count(g)) {
          refuse(name, task + " supplementary group " + std::to_string(g) + " is not in the spec's additionalGids");
        }
      }
    }

    uint64_t held = policy_.held();
    auto set = [&](const char* field, const google::protobuf::RepeatedField<uint32_t>& words, uint64_t allowed,
                   const char* specSet) {
      uint64_t mask = 0;
      for (int i = 0; i < words.size(); ++i) {
        if (i >= 2) {
          if (words[i] != 0) refuse(name, task + " " + field + " word " + std::to_string(i) + " " + hex(words[i]) + " holds unknown capabilities");
          continue;
        }
        mask |= uint64_t{words[i]} << (32 * i);
      }
      if (mask & ~allowed) {
        refuse(name, task + " " + field + " " + hex(mask) + " exceeds the spec's " + specSet + " set " + hex(allowed) +
                         " (" + capList(mask & ~allowed) + ")");
      }
    };
    set("CapInh", creds.cap_inh(), policy_.inheritable, "inheritable");
    set("CapPrm", creds.cap_prm(), policy_.allowedPermitted(), "permitted");
    set("CapEff", creds.cap_eff(), policy_.allowedEffective(), "effective");
    set("CapBnd", creds.cap_bnd(), policy_.bounding, "bounding");
    set("CapAmb", creds.cap_amb(), policy_.ambient, "ambient");

    if (creds.secbits() & ~kKnownSecurebits) refuse(name, task + " securebits " + hex(creds.secbits()) + " has unknown bits");
    if (creds.secbits() != 0 && !(held & capBit(kCapSetpcap))) {
      refuse(name, task + " securebits " + hex(creds.secbits()) + " set, but the spec gives it no CAP_SETPCAP");
    }
    if (policy_.noNewPrivileges && creds.no_new_privs() == 0) {
      refuse(name, task + " no_new_privs is off, but the spec sets noNewPrivileges");
    }
    if (!creds.lsm_profile().empty() && creds.lsm_profile() != policy_.lsmLabel) {
      refuse(name, task + " LSM profile `" + creds.lsm_profile() + "` is not the spec's `" + policy_.lsmLabel + "`");
    }
    if (!creds.lsm_sockcreate().empty() || !creds.apparmor_data().empty()) {
      refuse(name, task + " carries LSM socket or AppArmor data the spec does not name");
    }
  }

  void checkNamespaces() {
    std::map<NsKind, uint32_t> containerNs;  // kind -> the one id of the spec's namespace
    for (auto pid : tasks_) {
      std::string idsName = "ids-" + std::to_string(pid) + ".img";
      task_kobj_ids_entry ids;
      if (fs::exists(dir_ / idsName)) {
        CriuImageReader reader(dir_ / idsName, criu::kIdsMagic);
        reader.readOnly(ids);
      } else if (zombies_.count(pid)) {
        continue;
      } else if (idsFromCore_.count(pid)) {
        idsName = "core-" + std::to_string(pid) + ".img";
        ids = idsFromCore_[pid];
      } else {
        refuse(idsName, "missing for task " + std::to_string(pid));
      }
      if (idsFromCore_.count(pid) && idsName.rfind("ids-", 0) == 0) {
        // CRIU reads ids-N.img; ids in core-N.img must not say otherwise.
        if (idsFromCore_[pid].SerializeAsString() != ids.SerializeAsString()) {
          refuse("core-" + std::to_string(pid) + ".img", "task " + std::to_string(pid) + " ids differ from " + idsName);
        }
      }
      for (auto kind : kNsKinds) {
        auto id = nsId(ids, kind);
        auto hostId = nsId(rootIds_, kind);
        bool own = id != hostId;
        std::string task = "task " + std::to_string(pid) + " " + nsName(kind) + " namespace";
        if (kind == NsKind::Time && !policy_.namespaces.count(kind)) {
          // CRIU restores every task into a time namespace of its own (criu/timens.c,
          // so that CLOCK_MONOTONIC and CLOCK_BOOTTIME go on from the dump): a
          // container restored once has one. It shifts two clocks, nothing more;
          // still one for the whole container.
          if (!own) continue;
        } else if (!policy_.namespaces.count(kind)) {
          if (own) refuse(idsName, task + " " + std::to_string(id.value_or(0)) + " is one the spec does not create");
          continue;
        } else if (!own || !id) {
          refuse(idsName, task + " is the host's, but the spec creates one");
        }
        if (!id) continue;
        auto [at, inserted] = containerNs.emplace(kind, *id);
        if (!inserted && at->second != *id) {
          refuse(idsName, task + " " + std::to_string(*id) + " is a second one (the spec creates one, " +
                              std::to_string(at->second) + ")");
        }
      }
    }
  }

  // CRIU makes the user namespace from userns-N.img's maps, as root: they
  // must be exactly the spec's, the mapping this host allocated, or the
  // container's ids would be host ids of its choosing (0 among them).
  void checkUserNamespace() {
    auto& images = byKind_[ImageKind::NsImage];
    std::vector<std::string> userns;
    std::copy_if(images.begin(), images.end(), std::back_inserter(userns),
                 [](auto& name) { return name.rfind("userns-", 0) == 0; });
    if (!policy_.namespaces.count(NsKind::User)) return;  // listImages refused any userns image
    if (userns.size() != 1) {
      refuse(userns.empty() ? "userns-*.img" : userns[1],
             userns.empty() ? "missing: the spec creates a user namespace" : "a second user namespace");
    }
    CriuImageReader reader(dir_ / userns.front(), criu::kUsernsMagic);
    userns_entry entry;
    reader.readOnly(entry);
    auto extents = [](const auto& list) {
      std::vector<std::string> out;
      for (auto& e : list) {
        out.push_back(std::to_string(e.first()) + " " + std::to_string(e.lower_first()) + " " + std::to_string(e.count()));
      }
      return out;
    };
    auto join = [](const std::vector<std::string>& lines) {
      std::string out;
      for (auto& l : lines) out += (out.empty() ? "" : ", ") + l;
      return "[" + out + "]";
    };
    for (auto [what, got, want] : {std::tuple{"uid_map", extents(entry.uid_map()), policy_.uidMap},
                                   std::tuple{"gid_map", extents(entry.gid_map()), policy_.gidMap}}) {
      if (got != want) {
        refuse(reader.name(), std::string(what) + " " + join(got) + " is not this host's mapping for the container " +
                                  join(want));
      }
    }
  }

  void checkMounts(const std::string& name) {
    CriuImageReader reader(dir_ / name, criu::kMntsMagic);
    std::vector<mnt_entry> mounts;
    mnt_entry m;
    while (reader.next(m)) mounts.push_back(m);
    std::map<uint32_t, const mnt_entry*> byId;
    std::map<std::string, const mnt_entry*> byPoint;
    for (auto& e : mounts) {
      std::string what = "mount " + std::to_string(e.mnt_id()) + " at `" + e.mountpoint() + "`";
      if (e.mountpoint().empty() || e.mountpoint()[0] != '/' || hasDotDot(e.mountpoint()) || hasDotDot(e.root())) {
        refuse(name, what + ": mountpoint or root `" + e.root() + "` leaves the container");
      }
      if (!byId.emplace(e.mnt_id(), &e).second) refuse(name, what + ": mount id used twice");
      // One mount per mountpoint: a second one stacked on /proc would hide
      // the read-only and masked paths below it.
      if (!byPoint.emplace(e.mountpoint(), &e).second) refuse(name, what + ": a second mount at the same place");
    }
    const mnt_entry* root = nullptr;
    for (auto& e : mounts) {
      if (byId.count(e.parent_mnt_id())) continue;
      if (root || e.mountpoint() != "/") {
        refuse(name, "mount " + std::to_string(e.mnt_id()) + " at `" + e.mountpoint() + "` has no parent in the image");
      }
      root = &e;
    }
    if (!root) refuse(name, "no root mount");
    for (auto& e : mounts) {
      if (&e != root) checkMount(name, e, byId, byPoint);
    }
    requireProtectedPaths(name, byPoint);
  }

  void checkMount(const std::string& name, const mnt_entry& e, const std::map<uint32_t, const mnt_entry*>& byId,
                  const std::map<std::string, const mnt_entry*>& byPoint) {
    std::string what = "mount " + std::to_string(e.mnt_id()) + " at `" + e.mountpoint() + "`";
    // The parent is the deepest other mountpoint above it: nothing mounted
    // beside the tree to cover what the tree puts there.
    std::string parent;
    for (auto& [point, other] : byPoint) {
      if (other == &e) continue;
      bool above = point == "/" || e.mountpoint().rfind(point + "/", 0) == 0;
      if (above && point.size() > parent.size()) parent = point;
    }
    if (byId.at(e.parent_mnt_id())->mountpoint() != parent) {
      refuse(name, what + ": its parent is `" + byId.at(e.parent_mnt_id())->mountpoint() + "`, not `" + parent + "`");
    }
    if (e.with_plugin() || e.deleted()) refuse(name, what + ": plugin or deleted mounts are not restored here");
    if (e.shared_id() != 0 || e.master_id() != 0) {
      refuse(name, what + ": shared or slave propagation (the spec's mounts are private)");
    }
    std::string key = e.ext_mount() ? e.root() : e.ext_key();
    if (!key.empty()) {
      if (!policy_.externalKeys.count(key)) refuse(name, what + ": external mount `" + key + "` is not a bind mount of the spec");
      bool masked = key == "/dev/null" && policy_.maskedPaths.count(e.mountpoint());
      if (!masked && key != e.mountpoint()) {
        refuse(name, what + ": external mount `" + key + "` belongs at `" + key + "`");
      }
    } else {
      auto fsname = e.fstype() == AUTO || e.fstype() == UNSUPPORTED ? e.fsname() : fstype_Name(static_cast<fstype>(e.fstype()));
      if (fsname.empty()) fsname = "fstype " + std::to_string(e.fstype());
      auto sources = policy_.sources.find(e.fstype());
      if (sources == policy_.sources.end()) {
        refuse(name, what + ": " + fsname + " from `" + e.source() + "` is not a filesystem the spec mounts");
      }
      if (!sources->second.count(e.source())) {
        refuse(name, what + ": " + fsname + " source `" + e.source() + "` is not one the spec mounts");
      }
      // runc also binds the terminal's pty over /dev/console (a devpts mount).
      bool console = policy_.terminal && e.mountpoint() == "/dev/console" && e.fstype() == DEVPTS;
      bool known = policy_.mounts.count(e.mountpoint()) || policy_.maskedPaths.count(e.mountpoint()) ||
                   policy_.readonlyPaths.count(e.mountpoint()) || console;
      if (!known) refuse(name, what + ": the spec mounts nothing there");
    }
    // What covers a masked or read-only path is what runc puts there, not
    // just any read-only mount of an allowed filesystem (a proc bind of
    // /kcore over /proc/kcore would unmask it): /dev/null or an empty tmpfs
    // over a masked path, the same place of the same proc bound read-only
    // over a read-only one.
    if (policy_.maskedPaths.count(e.mountpoint())) {
      bool nullBind = key == "/dev/null";
      bool emptyTmpfs = key.empty() && e.fstype() == TMPFS && e.root() == "/";
      if (!nullBind && !emptyTmpfs) refuse(name, what + ": a masked path must be covered by /dev/null or an empty tmpfs");
    } else if (policy_.readonlyPaths.count(e.mountpoint()) && key.empty() && e.mountpoint().rfind("/proc/", 0) == 0) {
      if (e.fstype() != PROC || e.root() != e.mountpoint().substr(5)) {
        refuse(name, what + ": a read-only path must be its own place in proc, bound read-only (root `" + e.root() + "`)");
      }
    }
    // Flags the spec sets must still be set (MS_* values, as CRIU stores them).
    uint32_t required = 0;
    if (auto spec = policy_.mounts.find(e.mountpoint()); spec != policy_.mounts.end()) {
      for (auto& o : spec->second.value("options", json::array())) {
        if (o == "ro") required |= MS_RDONLY;
        if (o == "nosuid") required |= MS_NOSUID;
        if (o == "nodev") required |= MS_NODEV;
        if (o == "noexec") required |= MS_NOEXEC;
      }
    }
    if (policy_.readonlyPaths.count(e.mountpoint())) required |= MS_RDONLY;
    if (policy_.maskedPaths.count(e.mountpoint()) && key.empty()) required |= MS_RDONLY;
    if ((e.flags() & required) != required) {
      refuse(name, what + ": flags " + hex(e.flags()) + " lack " + hex(required & ~e.flags()) +
                       " (ro/nosuid/nodev/noexec the spec sets)");
    }
  }

  // runc masks and write-protects these at create; CRIU restores only what
  // the image holds, so a path the host has must be covered in the image.
  void requireProtectedPaths(const std::string& name, const std::map<std::string, const mnt_entry*>& byPoint) {
    std::set<std::string> protectedPaths = policy_.maskedPaths;
    protectedPaths.insert(policy_.readonlyPaths.begin(), policy_.readonlyPaths.end());
    for (auto& path : protectedPaths) {
      bool underKernelFs = path.rfind("/proc/", 0) == 0 || path.rfind("/sys/", 0) == 0;
      if (!underKernelFs || !fs::exists(fs::symlink_status(path, ec_))) continue;
      if (!byPoint.count(path)) refuse(name, "`" + path + "` is masked or read-only in the spec but not covered by a mount");
    }
  }

  void checkTmpfsTarball(const std::string& name) {
    // CRIU extracts these with GNU tar into the container's tmpfs: what they
    // hold becomes nodes in its /dev, /dev/shm, ...
    std::unique_ptr<archive, decltype(&archive_read_free)> a(archive_read_new(), archive_read_free);
    archive_read_support_filter_gzip(a.get());
    archive_read_support_format_tar(a.get());
    archive_read_support_format_gnutar(a.get());
    auto path = dir_ / name;
    if (archive_read_open_filename(a.get(), path.c_str(), 64 << 10) != ARCHIVE_OK) {
      refuse(name, std::string("not a gzipped tar: ") + archive_error_string(a.get()));
    }
    archive_entry* entry = nullptr;
    for (;;) {
      int r = archive_read_next_header(a.get(), &entry);
      if (r == ARCHIVE_EOF) break;
      if (r != ARCHIVE_OK) refuse(name, std::string("unreadable tar: ") + archive_error_string(a.get()));
      std::string entryName = archive_entry_pathname(entry) ? archive_entry_pathname(entry) : "";
      if (entryName.empty() || entryName[0] == '/' || hasDotDot(entryName)) {
        refuse(name, "entry `" + entryName + "` leaves the tmpfs");
      }
      auto type = archive_entry_filetype(entry);
      if (type == AE_IFBLK) {
        refuse(name, "entry `" + entryName + "` is block device " + std::to_string(archive_entry_rdevmajor(entry)) +
                         ":" + std::to_string(archive_entry_rdevminor(entry)));
      }
      if (type == AE_IFCHR) {
        auto major = static_cast<uint32_t>(archive_entry_rdevmajor(entry));
        auto minor = static_cast<uint32_t>(archive_entry_rdevminor(entry));
        if (!policy_.deviceAllowed('c', major, minor)) {
          refuse(name, "entry `" + entryName + "` is character device " + std::to_string(major) + ":" +
                           std::to_string(minor) + ", not one of the default devices");
        }
      } else if (type == AE_IFLNK) {
        // A symlink in a tmpfs is a way for an open-file entry to reach what
        // the spec never gave the container (/proc/self/fd/N is CRIU's own
        // descriptors while it restores): only the links runc makes in /dev.
        std::string target = archive_entry_symlink(entry) ? archive_entry_symlink(entry) : "";
        std::string link = entryName.rfind("./", 0) == 0 ? entryName.substr(2) : entryName;
        bool devTarball = name.rfind("tmpfs-dev-", 0) == 0;
        if (!devTarball || !isRuncDevLink(link, target)) {
          refuse(name, "entry `" + entryName + "` is a symlink to `" + target +
                           "`: only runc's own /dev links may be symlinks in a tmpfs image");
        }
      } else if (type != AE_IFREG && type != AE_IFDIR && type != AE_IFIFO) {
        refuse(name, "entry `" + entryName + "` has file type " + hex(type));
      }
      archive_read_data_skip(a.get());
    }
  }

  void checkGhostFile(const std::string& name) {
    // CRIU re-creates an unlinked-but-open file with mknod(mode, rdev).
    CriuImageReader reader(dir_ / name, criu::kGhostFileMagic);
    ghost_file_entry ghost;
    if (!reader.next(ghost)) refuse(name, "has no entry");
    auto rdev = static_cast<dev_t>(ghost.rdev());
    if (S_ISBLK(ghost.mode())) refuse(name, "ghost file is block device " + std::to_string(major(rdev)) + ":" + std::to_string(minor(rdev)));
    if (S_ISCHR(ghost.mode()) && !policy_.deviceAllowed('c', major(rdev), minor(rdev))) {
      refuse(name, "ghost file is character device " + std::to_string(major(rdev)) + ":" + std::to_string(minor(rdev)) +
                       ", not one of the default devices");
    }
  }

  // CRIU opens each open file by its name, as root, in the container's
  // mount namespace, while its own descriptors (the images directory among
  // them) are still in the task: a name under /proc (`/proc/self/fd/N`) or
  // /sys, or one that passes through a symlink, could hand the container a
  // host directory or a kernel interface. A dump records the path the kernel
  // resolved, so a real one never goes through a symlink.
  void checkRegFile(const std::string& name, const reg_file_entry& reg) {
    std::string what = "open file " + std::to_string(reg.id()) + " `" + reg.name() + "`";
    if (reg.ext()) refuse(name, what + " is an external file");
    if (hasDotDot(reg.name())) refuse(name, what + " leaves its mount");
    if (S_ISBLK(reg.mode())) refuse(name, what + " is a block device");
    const std::string& path = reg.name();
    auto under = [&](const std::string& dir) { return path == dir || path.rfind(dir + "/", 0) == 0; };
    if (under("/proc") || under("/sys")) refuse(name, what + ": files under /proc and /sys are not restored from a bundle");
    if (under("/dev") && !isDevicePathAllowed(path)) {
      refuse(name, what + ": under /dev only the default devices, /dev/pts, /dev/shm and /dev/mqueue");
    }
    if (rootfs_) refuseSymlinkOnTheWay(name, what, path);
  }

  void refuseSymlinkOnTheWay(const std::string& name, const std::string& what, const std::string& path) {
    Fd dir = openOrFail(*rootfs_, O_PATH | O_DIRECTORY | O_CLOEXEC);
    std::string walked;
    std::istringstream parts(path);
    std::string part;
    while (std::getline(parts, part, '/')) {
      if (part.empty() || part == ".") continue;
      walked += "/" + part;
      struct stat st;
      if (::fstatat(dir.get(), part.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) return;  // made at restore, or on a tmpfs
      if (S_ISLNK(st.st_mode)) refuse(name, what + " goes through the symlink `" + walked + "`");
      if (!S_ISDIR(st.st_mode)) return;
      int next = ::openat(dir.get(), part.c_str(), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      if (next < 0) return;
      dir = Fd(next);
    }
  }

  void checkOpenFiles(const std::string& name, bool oldLayout) {
    CriuImageReader reader(dir_ / name, oldLayout ? kRegFilesMagic : criu::kFilesMagic);
    if (oldLayout) {
      reg_file_entry reg;
      while (reader.next(reg)) checkRegFile(name, reg);
      return;
    }
    file_entry file;
    while (reader.next(file)) {
      switch (file.type()) {
        case NS: refuse(name, "file " + std::to_string(file.id()) + " is a namespace file");
        case TUNF: refuse(name, "file " + std::to_string(file.id()) + " is a tun device");
        case EXT: refuse(name, "file " + std::to_string(file.id()) + " is a plugin's external file");
        case BPFMAP: refuse(name, "file " + std::to_string(file.id()) + " is a BPF map");
        default: break;
      }
      if (file.has_reg()) checkRegFile(name, file.reg());
    }
  }

  void checkCgroupDir(const std::string& name, const cgroup_dir_entry& dir) {
    if (hasDotDot(dir.dir_name())) refuse(name, "cgroup `" + dir.dir_name() + "` leaves the container's cgroup");
    for (auto& prop : dir.properties()) {
      if (prop.name().rfind("devices.", 0) != 0) continue;
      // devices.list, written back through devices.allow: "TYPE MAJOR:MINOR ACCESS" lines.
      std::istringstream lines(prop.value());
      std::string line;
      while (std::getline(lines, line)) {
        if (line.empty()) continue;
        char type = 0;
        std::string numbers, access;
        std::istringstream fields(line);
        fields >> type >> numbers >> access;
        if (access.find_first_not_of("m") == std::string::npos && !access.empty()) continue;  // mknod only
        auto colon = numbers.find(':');
        auto majorText = numbers.substr(0, colon), minorText = colon == std::string::npos ? "" : numbers.substr(colon + 1);
        bool ok = false;
        try {
          if (type == 'c' && majorText == "136" && minorText == "*") ok = true;  // pts
          // runc's own default rule for /dev/net/tun (no node is made for it).
          else if (type == 'c' && majorText == "10" && minorText == "200") ok = true;
          else if ((type == 'c' || type == 'b') && majorText != "*" && minorText != "*") {
            ok = policy_.deviceAllowed(type, static_cast<uint32_t>(std::stoul(majorText)),
                                       static_cast<uint32_t>(std::stoul(minorText)));
          }
        } catch (const std::exception&) {
          ok = false;
        }
        if (!ok) refuse(name, "cgroup `" + dir.dir_name() + "` " + prop.name() + " allows `" + line + "`, not a default device");
      }
    }
    for (auto& child : dir.children()) checkCgroupDir(name, child);
  }

  void checkDeviceCgroup(const std::string& name) {
    CriuImageReader reader(dir_ / name, criu::kCgroupMagic);
    cgroup_entry cgroups;
    reader.readOnly(cgroups);
    for (auto& set : cgroups.sets()) {
      for (auto& ctl : set.ctls()) {
        if (hasDotDot(ctl.path())) refuse(name, "cgroup `" + ctl.path() + "` leaves the container's cgroup");
      }
    }
    for (auto& controller : cgroups.controllers()) {
      for (auto& dir : controller.dirs()) checkCgroupDir(name, dir);
    }
  }

  fs::path dir_;
  const SpecPolicy& policy_;
  std::optional<fs::path> rootfs_;  // the container's merged rootfs, when mounted
  std::error_code ec_;
  std::map<ImageKind, std::vector<std::string>> byKind_;
  task_kobj_ids_entry rootIds_;
  std::vector<uint32_t> tasks_;
  std::map<uint32_t, task_kobj_ids_entry> idsFromCore_;
  std::set<uint32_t> zombies_;
};

}  // namespace

void checkCriuImages(const fs::path& imagesDir, const json& spec, std::optional<fs::path> rootfs) {
  auto policy = SpecPolicy::fromSpec(spec);
  ImageChecker(imagesDir, policy, std::move(rootfs)).run();
}

}  // namespace migrate
