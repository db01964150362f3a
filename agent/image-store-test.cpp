#include "agent/image-store.h"

#include <archive.h>
#include <archive_entry.h>
#include <openssl/sha.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <map>

#include "common/error.h"
#include "common/files.h"
#include "common/subprocess.h"
#include "tests/support/skip.h"

using namespace migrate;

namespace {

std::string sha256Digest(const std::string& data) {
  unsigned char md[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(data.data()), data.size(), md);
  static const char* hex = "0123456789abcdef";
  std::string out = "sha256:";
  for (unsigned char c : md) {
    out += hex[c >> 4];
    out += hex[c & 15];
  }
  return out;
}

// One tar entry as a test writes it. type: f file, d dir, l symlink, h hard link, c char device.
struct Entry {
  std::string path;
  char type = 'f';
  std::string content;  // file data, or the link target for l and h
  int mode = 0;
};

Entry file(std::string path, std::string content, int mode = 0644) { return {std::move(path), 'f', std::move(content), mode}; }
Entry dir(std::string path) { return {std::move(path), 'd', {}, 0755}; }
Entry symlinkEntry(std::string path, std::string target) { return {std::move(path), 'l', std::move(target), 0777}; }
Entry hardlinkEntry(std::string path, std::string target) { return {std::move(path), 'h', std::move(target), 0644}; }

std::string makeTar(const std::vector<Entry>& entries, bool gzip = false) {
  std::string out;
  archive* a = archive_write_new();
  archive_write_set_format_pax_restricted(a);
  if (gzip) archive_write_add_filter_gzip(a);
  archive_write_open(
      a, &out, nullptr,
      [](archive*, void* self, const void* data, size_t size) -> la_ssize_t {
        static_cast<std::string*>(self)->append(static_cast<const char*>(data), size);
        return static_cast<la_ssize_t>(size);
      },
      nullptr);
  for (auto& e : entries) {
    archive_entry* entry = archive_entry_new();
    archive_entry_set_pathname(entry, e.path.c_str());
    archive_entry_set_mtime(entry, 1700000000, 0);
    archive_entry_set_perm(entry, static_cast<mode_t>(e.mode));
    switch (e.type) {
      case 'f':
        archive_entry_set_filetype(entry, AE_IFREG);
        archive_entry_set_size(entry, static_cast<la_int64_t>(e.content.size()));
        break;
      case 'd':
        archive_entry_set_filetype(entry, AE_IFDIR);
        break;
      case 'l':
        archive_entry_set_filetype(entry, AE_IFLNK);
        archive_entry_set_symlink(entry, e.content.c_str());
        break;
      case 'h':
        archive_entry_set_filetype(entry, AE_IFREG);
        archive_entry_set_hardlink(entry, e.content.c_str());
        break;
      case 'c':
        archive_entry_set_filetype(entry, AE_IFCHR);
        archive_entry_set_rdev(entry, makedev(1, 3));
        break;
    }
    REQUIRE(archive_write_header(a, entry) == ARCHIVE_OK);
    if (e.type == 'f') archive_write_data(a, e.content.data(), e.content.size());
    archive_entry_free(entry);
  }
  archive_write_close(a);
  archive_write_free(a);
  return out;
}

void writeFile(const fs::path& path, const std::string& content) {
  fs::create_directories(path.parent_path());
  writeFileAtomic(path, content);
}

// An OCI image layout the test assembles blob by blob.
struct Layout {
  explicit Layout(fs::path d) : dir(std::move(d)) {
    fs::create_directories(dir / "blobs" / "sha256");
    writeFile(dir / "oci-layout", R"({"imageLayoutVersion":"1.0.0"})");
  }

  nlohmann::json addBlob(const std::string& content, const std::string& mediaType) {
    auto digest = sha256Digest(content);
    writeFile(dir / "blobs" / "sha256" / digest.substr(7), content);
    return {{"mediaType", mediaType}, {"digest", digest}, {"size", content.size()}};
  }

  // Adds config + manifest for `layers`; returns the manifest's descriptor.
  nlohmann::json addImage(const std::vector<std::string>& layers, const nlohmann::json& config) {
    nlohmann::json layerDescs = nlohmann::json::array();
    for (auto& layer : layers) layerDescs.push_back(addBlob(layer, "application/vnd.oci.image.layer.v1.tar+gzip"));
    nlohmann::json manifest = {
        {"schemaVersion", 2},
        {"mediaType", "application/vnd.oci.image.manifest.v1+json"},
        {"config", addBlob(config.dump(), "application/vnd.oci.image.config.v1+json")},
        {"layers", layerDescs},
    };
    return addBlob(manifest.dump(), "application/vnd.oci.image.manifest.v1+json");
  }

  void writeIndex(const std::vector<std::pair<nlohmann::json, std::string>>& manifests) {
    nlohmann::json list = nlohmann::json::array();
    for (auto& [desc, ref] : manifests) {
      auto d = desc;
      if (!ref.empty()) d["annotations"] = {{"org.opencontainers.image.ref.name", ref}};
      list.push_back(d);
    }
    writeFile(dir / "index.json", nlohmann::json{{"schemaVersion", 2}, {"manifests", list}}.dump());
  }

  fs::path dir;
};

nlohmann::json testConfig() {
  return {
      {"created", "2024-05-01T00:00:00Z"},
      {"architecture", "amd64"},
      {"os", "linux"},
      {"config",
       {{"Entrypoint", {"/bin/tool"}}, {"Cmd", {"--serve"}}, {"Env", {"PATH=/bin", "A=b"}}, {"WorkingDir", "/data"},
        {"User", "65534"}}},
      {"rootfs", {{"type", "layers"}, {"diff_ids", nlohmann::json::array()}}},
  };
}

std::string layer1() {
  return makeTar(
      {dir("etc"), file("etc/hello", "hello\n"), dir("data"), file("data/keep", "k"), dir("data/sub"),
       file("data/sub/old", "o"), file("gone.txt", "bye"), dir("dir2"), file("dir2/x", "x"), dir("bin"),
       file("bin/tool", "#!/bin/sh\n", 0755), file("bin/a", "same inode"), hardlinkEntry("bin/b", "bin/a"),
       symlinkEntry("link", "etc/hello"), hardlinkEntry("hard", "etc/hello")},
      /*gzip=*/true);
}

// Deletes gone.txt, makes data/ opaque (its marker after this layer's own
// data/new, to check that order does not matter), replaces etc/hello and
// turns the directory dir2 into a file; its device node is skipped.
std::string layer2() {
  return makeTar({file(".wh.gone.txt", ""), dir("data"), file("data/new", "n"), file("data/.wh..wh..opq", ""),
                  file("etc/hello", "hello2\n"), file("dir2", "now a file"), dir("dev"), {"dev/null", 'c', {}, 0666}},
                 /*gzip=*/true);
}

// Everything observable about a tree, keyed by relative path.
std::map<std::string, std::string> snapshot(const fs::path& root) {
  std::map<std::string, std::string> out;
  for (auto it = fs::recursive_directory_iterator(root); it != fs::recursive_directory_iterator(); ++it) {
    struct stat st;
    REQUIRE(::lstat(it->path().c_str(), &st) == 0);
    std::string d = std::to_string(st.st_mode) + " " + std::to_string(st.st_uid) + ":" + std::to_string(st.st_gid) +
                    " " + std::to_string(st.st_nlink) + " ";
    if (S_ISLNK(st.st_mode)) d += "-> " + fs::read_symlink(it->path()).string();
    if (S_ISREG(st.st_mode)) d += sha256Digest(readFile(it->path())) + " " + std::to_string(st.st_mtime);
    out[fs::relative(it->path(), root).string()] = d;
  }
  return out;
}

bool treeHolds(const fs::path& root, const std::string& name) {
  for (auto it = fs::recursive_directory_iterator(root); it != fs::recursive_directory_iterator(); ++it) {
    if (it->path().filename() == name) return true;
  }
  return false;
}

bool isEmptyDir(const fs::path& p) { return fs::is_empty(p); }

fs::path busyboxTarball(const fs::path& dir) {
  auto out = dir / "test-image.tar";
  run({std::string(MIGRATE_SOURCE_DIR) + "/tests/support/make-test-image.sh", out.string()});
  return out;
}

bool haveBusybox() { return ::access("/bin/busybox", X_OK) == 0; }

std::string errorOf(const std::function<void()>& f, ErrorKind expected) {
  try {
    f();
  } catch (const Error& e) {
    CHECK(kindName(e.kind()) == kindName(expected));
    return e.what();
  }
  FAIL("no error thrown");
  return {};
}

}  // namespace

TEST_CASE("image store imports a rootfs tarball and finds it by name, digest and prefix") {
  if (!haveBusybox()) SKIP_TEST("/bin/busybox (busybox-static) is not installed");
  TempDir tmp("/tmp", "image-store-test");
  auto tarball = busyboxTarball(tmp.path());
  auto again = tmp.path() / "again.tar";
  run({std::string(MIGRATE_SOURCE_DIR) + "/tests/support/make-test-image.sh", again.string()});
  REQUIRE(readFile(tarball) == readFile(again));  // the script is deterministic

  ImageStore store(tmp.path() / "images");
  auto info = store.import(tarball, "busybox:1");
  CHECK(info.digest == sha256Digest(readFile(tarball)));
  CHECK(info.names == std::vector<std::string>{"busybox:1"});
  CHECK(info.size > 1000000);
  CHECK(info.config == ImageConfig{});

  auto rootfs = store.rootfsPath(info);
  CHECK(rootfs == tmp.path() / "images" / "sha256" / info.digest.substr(7) / "rootfs");
  CHECK(fs::is_regular_file(rootfs / "bin/busybox"));
  CHECK(fs::read_symlink(rootfs / "bin/sh") == "busybox");
  CHECK(readFile(rootfs / "etc/passwd").starts_with("root:x:0:0:"));
  CHECK((fs::status(rootfs / "tmp").permissions() & fs::perms::sticky_bit) != fs::perms::none);
  for (auto d : {"proc", "sys", "dev", "run", "var/tmp", "root", "usr/local/bin"}) CHECK(fs::is_directory(rootfs / d));

  // The same bytes again only add a name.
  auto second = store.importRootfsTar(again, "busybox:latest");
  CHECK(second.digest == info.digest);
  CHECK(second.names == std::vector<std::string>{"busybox:1", "busybox:latest"});
  REQUIRE(store.list().size() == 1);
  CHECK(isEmptyDir(tmp.path() / "images" / "tmp"));

  // Compressed, it is another file and so another digest, with the same tree.
  run({"gzip", "-k", tarball.string()});
  auto gz = store.import(tarball.string() + ".gz", "busybox:gz");
  CHECK(gz.digest == sha256Digest(readFile(tarball.string() + ".gz")));
  CHECK(snapshot(store.rootfsPath(gz)) == snapshot(rootfs));
  store.remove(gz.digest, nullptr);

  CHECK(store.find("busybox:1").digest == info.digest);
  CHECK(store.find("busybox").digest == info.digest);  // :latest implied
  CHECK(store.find(info.digest).digest == info.digest);
  CHECK(store.find(info.digest.substr(7, 6)).digest == info.digest);
  CHECK(store.find("sha256:" + info.digest.substr(7, 10)).digest == info.digest);
  CHECK_FALSE(store.findIfExists(info.digest.substr(7, 5)));
  CHECK_FALSE(store.findIfExists("alpine"));
  CHECK_FALSE(store.findIfExists("sha256:" + std::string(64, '0')));
  auto message = errorOf([&] { store.find("alpine"); }, ErrorKind::NotFound);
  CHECK(message == "image `alpine` not found");

  // A reopened store sees the same.
  ImageStore reopened(tmp.path() / "images");
  CHECK(reopened.find("busybox:1").toJson() == store.find("busybox:1").toJson());
}

TEST_CASE("image store removes an image only when no container uses it") {
  TempDir tmp("/tmp", "image-store-test");
  auto tarball = tmp.path() / "small.tar";
  writeFile(tarball, makeTar({dir("etc"), file("etc/os-release", "ID=test\n")}));
  ImageStore store(tmp.path() / "images");
  auto info = store.import(tarball, "small");
  auto message = errorOf([&] { store.remove("small", [&](const std::string& d) { return d == info.digest; }); },
                         ErrorKind::Conflict);
  CHECK(message.find("in use") != std::string::npos);
  CHECK(fs::exists(store.rootfsPath(info) / "etc/os-release"));

  store.remove("small", [](const std::string&) { return false; });
  CHECK_FALSE(store.findIfExists("small"));
  CHECK_FALSE(fs::exists(store.rootfsPath(info)));
  CHECK(isEmptyDir(tmp.path() / "images" / "sha256"));
  CHECK(isEmptyDir(tmp.path() / "images" / "tmp"));
  errorOf([&] { store.remove("small", nullptr); }, ErrorKind::NotFound);
}

TEST_CASE("image store names move to the newest image that claims them") {
  TempDir tmp("/tmp", "image-store-test");
  writeFile(tmp.path() / "a.tar", makeTar({file("a", "a")}));
  writeFile(tmp.path() / "b.tar", makeTar({file("b", "b")}));
  ImageStore store(tmp.path() / "images");
  auto a = store.import(tmp.path() / "a.tar", "app:1");
  auto b = store.import(tmp.path() / "b.tar", "app:1");
  CHECK(store.find("app:1").digest == b.digest);
  CHECK(store.find(a.digest).names.empty());

  store.addName(a.digest, "app:old");
  store.addName("app:old", "app:1");
  CHECK(store.find("app:1").digest == a.digest);
  CHECK(store.find(a.digest).names == std::vector<std::string>{"app:old", "app:1"});
  CHECK(store.find(b.digest).names.empty());
  errorOf([&] { store.addName(a.digest, "bad name"); }, ErrorKind::InvalidInput);
  errorOf([&] { store.addName(a.digest, "sha256:abc"); }, ErrorKind::InvalidInput);
}

TEST_CASE("image store imports an OCI layout with whiteouts and opaque directories") {
  TempDir tmp("/tmp", "image-store-test");
  Layout layout(tmp.path() / "layout");
  auto l1 = layer1();
  auto manifest = layout.addImage({l1, layer2()}, testConfig());
  auto other = layout.addImage({l1}, testConfig());
  layout.writeIndex({{other, "1.0"}, {manifest, "2.0"}});

  ImageStore store(tmp.path() / "images");
  auto info = store.import(layout.dir, "test:2.0");  // picks the manifest annotated 2.0
  CHECK(info.digest == manifest["digest"]);
  CHECK(info.created == "2024-05-01T00:00:00Z");
  CHECK(info.config.entrypoint == std::vector<std::string>{"/bin/tool"});
  CHECK(info.config.cmd == std::vector<std::string>{"--serve"});
  CHECK(info.config.env == std::vector<std::string>{"PATH=/bin", "A=b"});
  CHECK(info.config.workingDir == "/data");
  CHECK(info.config.user == "65534");

  auto r = store.rootfsPath(info);
  CHECK_FALSE(fs::exists(r / "gone.txt"));
  CHECK_FALSE(fs::exists(r / ".wh.gone.txt"));
  std::vector<std::string> data;
  for (auto& e : fs::directory_iterator(r / "data")) data.push_back(e.path().filename());
  CHECK(data == std::vector<std::string>{"new"});
  CHECK(readFile(r / "etc/hello") == "hello2\n");
  CHECK(readFile(r / "hard") == "hello\n");  // replaced by unlinking, not written through the link
  CHECK(readFile(r / "dir2") == "now a file");
  CHECK(fs::read_symlink(r / "link") == "etc/hello");
  CHECK(fs::equivalent(r / "bin/a", r / "bin/b"));
  CHECK((fs::status(r / "bin/tool").permissions() & fs::perms::owner_exec) != fs::perms::none);
  CHECK(fs::is_directory(r / "dev"));
  CHECK_FALSE(fs::exists(r / "dev/null"));  // device nodes are skipped

  // Without a matching annotation, the first manifest.
  ImageStore other1(tmp.path() / "images-first");
  CHECK(other1.import(layout.dir, "whatever").digest == other["digest"]);
  CHECK(fs::exists(other1.rootfsPath(other1.find("whatever")) / "gone.txt"));

  SECTION("the same layout as a (compressed) tar gives the same image") {
    auto tarball = tmp.path() / "layout.tar.gz";
    run({"tar", "-C", layout.dir.string(), "-czf", tarball.string(), "."});
    ImageStore second(tmp.path() / "images2");
    auto fromTar = second.import(tarball, "test:2.0");
    CHECK(fromTar.digest == info.digest);
    CHECK(snapshot(second.rootfsPath(fromTar)) == snapshot(r));
    // And into the first store: only a name is added.
    auto again = store.importOciLayout(tarball, "again:2.0");  // matches by tag
    CHECK(again.digest == info.digest);
    CHECK(again.names == std::vector<std::string>{"test:2.0", "again:2.0"});
    CHECK(isEmptyDir(tmp.path() / "images2" / "tmp"));
  }

  SECTION("a blob whose content does not match its digest is refused") {
    ImageStore third(tmp.path() / "images3");
    auto layerDigest = sha256Digest(l1);
    auto tampered = l1;
    tampered[tampered.size() / 2] ^= 0x55;
    writeFile(layout.dir / "blobs/sha256" / layerDigest.substr(7), tampered);
    auto message = errorOf([&] { third.import(layout.dir, "test:2.0"); }, ErrorKind::InvalidInput);
    CHECK(message.find("image import of `test:2.0`") != std::string::npos);
    CHECK(message.find(layerDigest) != std::string::npos);
    CHECK(isEmptyDir(tmp.path() / "images3" / "sha256"));
    CHECK(isEmptyDir(tmp.path() / "images3" / "tmp"));

    // A manifest blob that lies about its size, likewise.
    auto bad = manifest;
    bad["size"] = bad["size"].get<int>() + 1;
    layout.writeIndex({{bad, ""}});
    errorOf([&] { third.import(layout.dir, "x"); }, ErrorKind::InvalidInput);
    CHECK(isEmptyDir(tmp.path() / "images3" / "sha256"));
  }
}

TEST_CASE("image store refuses layers that write outside the image") {
  TempDir tmp("/tmp", "image-store-test");
  auto outside = tmp.path() / "outside";
  fs::create_directories(outside);
  writeFile(outside / "victim", "precious");
  ImageStore store(tmp.path() / "images");

  auto importLayers = [&](const std::vector<std::string>& layers) {
    Layout layout(tmp.path() / ("layout" + std::to_string(::random())));
    layout.writeIndex({{layout.addImage(layers, testConfig()), ""}});
    return errorOf([&] { store.import(layout.dir, "evil"); }, ErrorKind::InvalidInput);
  };
  auto checkNothingWritten = [&] {
    CHECK_FALSE(treeHolds(tmp.path(), "escape"));
    CHECK_FALSE(treeHolds(tmp.path(), "pwned"));
    CHECK(readFile(outside / "victim") == "precious");
    CHECK(isEmptyDir(tmp.path() / "images" / "sha256"));
    CHECK(isEmptyDir(tmp.path() / "images" / "tmp"));
  };

  SECTION("dot-dot") {
    auto layer = makeTar({file("ok", "ok"), file("../escape", "x")});
    auto message = importLayers({layer});
    CHECK(message == "image import of `evil`: manifest " + message.substr(message.find("sha256:"), 7 + 12) +
                         "…: layer " + sha256Digest(layer).substr(0, 7 + 12) +
                         "…: entry `../escape`: refused (`..` component in path)");
    importLayers({makeTar({file("a/../../../escape", "x")})});
    checkNothingWritten();
  }
  SECTION("absolute path") {
    auto message = importLayers({makeTar({file((outside / "escape").string(), "x")})});
    CHECK(message.find("refused (absolute path)") != std::string::npos);
    checkNothingWritten();
  }
  SECTION("a file written through an absolute symlink") {
    auto message = importLayers({makeTar({symlinkEntry("link", outside.string()), file("link/pwned", "x")})});
    CHECK(message.find("entry `link/pwned`: refused") != std::string::npos);
    importLayers({makeTar({symlinkEntry("up", "../../../../../../.."), file("up/pwned", "x")})});
    // Across layers: the symlink in one, the write in the next.
    importLayers({makeTar({symlinkEntry("link", outside.string())}), makeTar({file("link/pwned", "x")})});
    checkNothingWritten();
  }
  SECTION("whiteouts and hard links through a symlink") {
    auto message = importLayers({makeTar({symlinkEntry("lnk", outside.string())}), makeTar({file("lnk/.wh.victim", "")})});
    CHECK(message.find("refused (path goes through a symlink)") != std::string::npos);
    importLayers({makeTar({symlinkEntry("lnk", outside.string())}), makeTar({file("lnk/.wh..wh..opq", "")})});
    importLayers({makeTar({symlinkEntry("lnk", outside.string()), hardlinkEntry("pwned", "lnk/victim")})});
    importLayers({makeTar({hardlinkEntry("pwned", "../outside/victim")})});
    checkNothingWritten();
    struct stat st;
    REQUIRE(::stat((outside / "victim").c_str(), &st) == 0);
    CHECK(st.st_nlink == 1);
  }
  SECTION("a plain rootfs tarball is held to the same rules") {
    writeFile(tmp.path() / "evil.tar", makeTar({file("../escape", "x")}));
    auto message = errorOf([&] { store.import(tmp.path() / "evil.tar", "evil"); }, ErrorKind::InvalidInput);
    CHECK(message.find("entry `../escape`: refused (`..` component in path)") != std::string::npos);
    writeFile(tmp.path() / "junk.tar", "this is not a tar archive at all");
    errorOf([&] { store.import(tmp.path() / "junk.tar", "junk"); }, ErrorKind::InvalidInput);
    checkNothingWritten();
  }
}

TEST_CASE("image store exports and imports an image between stores") {
  TempDir tmp("/tmp", "image-store-test");
  ImageStore source(tmp.path() / "source");
  ImageStore target(tmp.path() / "target");

  std::vector<ImageInfo> images;
  Layout layout(tmp.path() / "layout");
  layout.writeIndex({{layout.addImage({layer1(), layer2()}, testConfig()), ""}});
  images.push_back(source.import(layout.dir, "oci:1"));
  if (haveBusybox()) {
    images.push_back(source.import(busyboxTarball(tmp.path()), "busybox:1"));
  } else {
    WARN("busybox part skipped: /bin/busybox (busybox-static) is not installed");
  }

  for (auto& image : images) {
    StringOutputStream out;
    source.exportImage(image.digest, out);
    StringInputStream in(out.data());
    auto imported = target.importExported(in);
    CHECK(imported.digest == image.digest);
    CHECK(imported.names == image.names);
    CHECK(imported.config == image.config);
    CHECK(imported.created == image.created);
    CHECK(imported.size == image.size);
    CHECK(snapshot(target.rootfsPath(imported)) == snapshot(source.rootfsPath(image)));
    // Again: already present, nothing changes, the stream is consumed.
    StringInputStream in2(out.data());
    CHECK(target.importExported(in2).digest == image.digest);
  }
  auto r = target.rootfsPath(target.find("oci:1"));
  CHECK(fs::equivalent(r / "bin/a", r / "bin/b"));

  // A name the target already gives another image stays there.
  ImageStore third(tmp.path() / "third");
  writeFile(tmp.path() / "local.tar", makeTar({file("local", "l")}));
  auto local = third.import(tmp.path() / "local.tar", "oci:1");
  StringOutputStream out;
  source.exportImage("oci:1", out);
  StringInputStream in(out.data());
  auto imported = third.importExported(in);
  CHECK(imported.names.empty());
  CHECK(third.find("oci:1").digest == local.digest);
}

TEST_CASE("image store refuses hostile exported streams") {
  TempDir tmp("/tmp", "image-store-test");
  ImageStore store(tmp.path() / "images");
  ImageInfo info;
  info.digest = sha256Digest("anything");
  info.names = {"x"};
  auto json = info.toJson().dump();

  auto importTar = [&](const std::vector<Entry>& entries) {
    StringInputStream in(makeTar(entries));
    return errorOf([&] { store.importExported(in); }, ErrorKind::InvalidInput);
  };
  CHECK(importTar({file("image.json", json), file("rootfs/../escape", "x")}).find("`..` component in path") !=
        std::string::npos);
  CHECK(importTar({file("image.json", json), file("etc/passwd", "x")}).find("not under rootfs/") != std::string::npos);
  CHECK(importTar({file("rootfs/a", "a"), file("image.json", json)}).find("does not start with image.json") !=
        std::string::npos);
  CHECK(importTar({file("image.json", R"({"digest":"sha256:../../etc"})")}).find("malformed digest") !=
        std::string::npos);
  importTar({file("image.json", json), symlinkEntry("rootfs/l", "/"), file("rootfs/l/escape", "x")});
  CHECK_FALSE(treeHolds(tmp.path(), "escape"));
  CHECK(isEmptyDir(tmp.path() / "images" / "sha256"));
  CHECK(isEmptyDir(tmp.path() / "images" / "tmp"));
}
