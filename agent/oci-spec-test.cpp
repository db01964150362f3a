#include "agent/oci-spec.h"

#include <sys/resource.h>

#include <catch2/catch.hpp>
#include <algorithm>
#include <set>

#include "common/files.h"

using namespace migrate;
using nlohmann::json;

namespace {

ContainerConfig sampleConfig() {
  ContainerConfig c;
  c.id = "0123456789abcdef0123456789abcdef";
  c.name = "web";
  c.imageDigest = "sha256:abc";
  c.imageName = "test";
  c.args = {"/bin/sh", "-c", "true"};
  c.env = {"PATH=/custom/bin", "FOO=bar"};
  c.hostname = "web";
  return c;
}

json findMount(const json& spec, const std::string& destination) {
  for (auto& m : spec["mounts"]) {
    if (m["destination"] == destination) return m;
  }
  return nullptr;
}

}  // namespace

TEST_CASE("spec: namespaces, hostname, process, cgroups and the CRIU config annotation") {
  SpecInputs in;
  in.rootfs = "/state/containers/x/rootfs";
  in.netns = "/state/netns/x";
  in.cgroupsPath = "/migrate/host1/x";
  in.criuConfig = "/state/criu.conf";
  in.imageEnv = {"LANG=C", "FOO=image"};
  in.imageWorkingDir = "/srv";
  auto spec = generateSpec(sampleConfig(), in);

  CHECK(spec["root"]["path"] == "/state/containers/x/rootfs");
  CHECK(spec["hostname"] == "web");
  CHECK(spec["process"]["terminal"] == false);
  CHECK(spec["process"]["args"] == json({"/bin/sh", "-c", "true"}));
  CHECK(spec["process"]["cwd"] == "/srv");
  CHECK(spec["process"]["user"]["uid"] == 0);
  CHECK(spec["linux"]["cgroupsPath"] == "/migrate/host1/x");
  CHECK(spec["annotations"]["org.criu.config"] == "/state/criu.conf");
  CHECK(spec["annotations"]["io.migrate.name"] == "web");

  std::set<std::string> types;
  std::string netnsPath;
  for (auto& ns : spec["linux"]["namespaces"]) {
    types.insert(ns["type"]);
    if (ns["type"] == "network") netnsPath = ns.value("path", "");
  }
  CHECK(types == std::set<std::string>{"pid", "ipc", "uts", "mount", "network"});
  CHECK(netnsPath == "/state/netns/x");

  // Container env overrides image env, which overrides the default PATH.
  auto env = spec["process"]["env"].get<std::vector<std::string>>();
  CHECK(std::count(env.begin(), env.end(), "PATH=/custom/bin") == 1);
  CHECK(std::count(env.begin(), env.end(), "FOO=bar") == 1);
  CHECK(std::count(env.begin(), env.end(), "FOO=image") == 0);
  CHECK(std::count(env.begin(), env.end(), "LANG=C") == 1);
  CHECK(std::count(env.begin(), env.end(), "HOSTNAME=web") == 1);

  CHECK(findMount(spec, "/dev/shm")["type"] == "tmpfs");
  CHECK(findMount(spec, "/proc")["type"] == "proc");
}

TEST_CASE("spec: without a netns path runc makes a fresh network namespace") {
  SpecInputs in;
  in.rootfs = "/r";
  in.cgroupsPath = "/migrate/h/x";
  auto spec = generateSpec(sampleConfig(), in);
  for (auto& ns : spec["linux"]["namespaces"]) {
    if (ns["type"] == "network") CHECK_FALSE(ns.contains("path"));
  }
  CHECK_FALSE(spec["annotations"].contains("org.criu.config"));
}

TEST_CASE("spec: rlimits never exceed the agent's own hard limits") {
  struct rlimit nofile;
  REQUIRE(getrlimit(RLIMIT_NOFILE, &nofile) == 0);
  auto limits = clampedRlimits();
  bool sawNofile = false;
  for (auto& l : limits) {
    CHECK(l["soft"] == l["hard"]);
    if (l["type"] == "RLIMIT_NOFILE") {
      sawNofile = true;
      CHECK(l["hard"].get<uint64_t>() <= nofile.rlim_max);
    }
  }
  CHECK(sawNofile);
}

TEST_CASE("spec: a non-numeric user and an empty command are refused") {
  SpecInputs in;
  in.rootfs = "/r";
  auto c = sampleConfig();
  c.user = "nobody";
  CHECK_THROWS_WITH(generateSpec(c, in), Catch::Contains("numeric"));
  c = sampleConfig();
  c.args.clear();
  CHECK_THROWS_WITH(generateSpec(c, in), Catch::Contains("no command"));
  c = sampleConfig();
  c.user = "1000:100";
  auto spec = generateSpec(c, in);
  CHECK(spec["process"]["user"]["uid"] == 1000);
  CHECK(spec["process"]["user"]["gid"] == 100);
}

TEST_CASE("spec: bind mounts of the generated /etc files") {
  TempDir dir(fs::temp_directory_path(), "oci-spec-test");
  auto config = sampleConfig();
  auto mounts = makeBindMounts(config, dir.path() / "userdata", "198.18.0.21");
  CHECK(readFile(mounts.at("/etc/hostname")) == "web\n");
  CHECK(readFile(mounts.at("/etc/hosts")).find("198.18.0.21\tweb") != std::string::npos);
  CHECK(readFile(mounts.at("/run/.containerenv")).find("name=\"web\"") != std::string::npos);
  CHECK(fs::exists(mounts.at("/etc/resolv.conf")));

  SpecInputs in;
  in.rootfs = dir.path() / "rootfs";
  in.bindMounts = mounts;
  in.cgroupsPath = "/migrate/host1/x";
  auto spec = generateSpec(config, in);
  CHECK(findMount(spec, "/etc/hosts")["source"] == (dir.path() / "userdata" / "hosts").string());
}

namespace {

// The same container's spec as two hosts generate it.
struct TwoHostsSpecs {
  TempDir here{fs::temp_directory_path(), "oci-spec-here"}, there{fs::temp_directory_path(), "oci-spec-there"};
  SpecInputs sourceInputs, targetInputs;
  nlohmann::json source, target;

  TwoHostsSpecs() {
    auto config = sampleConfig();
    sourceInputs.rootfs = here.path() / "rootfs";
    sourceInputs.bindMounts = makeBindMounts(config, here.path() / "userdata", "198.18.0.21");
    sourceInputs.cgroupsPath = "/migrate/host1/x";
    sourceInputs.netns = "/var/lib/a/netns/x";
    targetInputs.rootfs = there.path() / "rootfs";
    targetInputs.bindMounts = makeBindMounts(config, there.path() / "userdata", "198.18.0.21");
    targetInputs.cgroupsPath = "/migrate/host2/x";
    targetInputs.netns = "/var/lib/b/netns/x";
    source = generateSpec(config, sourceInputs);
    target = generateSpec(config, targetInputs);
  }
};

}  // namespace

TEST_CASE("spec: a checkpointed spec from another host differs only where it was tampered with") {
  TwoHostsSpecs specs;
  // Host paths are the hosts' own: no difference to report.
  CHECK(specDifferences(specs.source, specs.target, specs.targetInputs).empty());

  auto tampered = specs.source;
  tampered["hooks"] = {{"prestart", {{{"path", "/bin/sh"}, {"args", {"sh", "-c", "id > /tmp/owned"}}}}}};
  for (auto& mount : tampered["mounts"]) {
    if (mount["destination"] == "/etc/hosts") mount["source"] = "/etc/shadow";
  }
  tampered["process"]["capabilities"]["effective"].push_back("CAP_SYS_ADMIN");
  tampered["linux"]["devices"] = {{{"path", "/dev/loop0"}, {"type", "b"}, {"major", 7}, {"minor", 0}}};
  auto changes = specDifferences(tampered, specs.target, specs.targetInputs);
  auto mentions = [&](const std::string& what) {
    return std::any_of(changes.begin(), changes.end(), [&](auto& line) { return line.find(what) != std::string::npos; });
  };
  CHECK(mentions("/hooks"));
  CHECK(mentions("/etc/shadow"));
  CHECK(mentions("/process/capabilities/effective"));
  CHECK(mentions("/linux/devices"));
  // Hostile shapes are reported, never thrown on.
  CHECK(specDifferences(nlohmann::json::array(), specs.target, specs.targetInputs).size() == 1);
  CHECK_NOTHROW(specDifferences({{"root", 5}, {"mounts", "x"}, {"linux", {{"namespaces", 3}}}}, specs.target,
                                specs.targetInputs));
}

TEST_CASE("spec: SELinux labels only where SELinux is enabled") {
  auto labels = containerSelinuxLabels();
  if (!labels) {
    SUCCEED("SELinux is off on this host: no labels, as expected");
    return;
  }
  CHECK(labels->process.find(":s0:c") != std::string::npos);
  CHECK(labels->mount.find(":s0:c") != std::string::npos);
}
