#include "agent/image-store.h"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <memory>

#include "agent/identifiers.h"
#include "agent/layer-applier.h"
#include "agent/oci-layout.h"
#include "agent/tar-stream.h"
#include "common/error.h"
#include "common/fd.h"
#include "common/files.h"
#include "common/hash-stream.h"
#include "common/log.h"
#include "common/relative-path.h"
#include "common/syscall.h"
#include "common/timestamp.h"

namespace migrate {

namespace {

bool isLowerHex(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

void checkName(std::string_view name) {
  bool ok = !name.empty() && name.size() <= 255 && !name.starts_with("sha256:") &&
            std::all_of(name.begin(), name.end(), [](char c) {
              return std::isalnum(static_cast<unsigned char>(c)) || std::strchr("._-/:@", c);
            });
  if (!ok) fail(ErrorKind::InvalidInput, "image name `" + std::string(name) + "` is not valid");
}

// Writes a tar to an OutputStream.
class TarWriter {
 public:
  explicit TarWriter(OutputStream& out) : archive_(out) {
    archive_write_set_format_pax_restricted(get());
    archive_write_set_bytes_in_last_block(get(), 1);
    if (archive_.open() != ARCHIVE_OK) rethrowOrFail("tar");
  }

  archive* get() { return archive_.get(); }

  void writeHeader(archive_entry* entry) {
    int r = archive_write_header(get(), entry);
    if (r == ARCHIVE_WARN) logWarn("tar: " + archive_.errorText());
    if (r < ARCHIVE_WARN) rethrowOrFail(std::string("tar header of `") + archive_entry_pathname(entry) + "`");
  }
  void writeData(const void* data, size_t size) {
    if (archive_write_data(get(), data, size) < 0) rethrowOrFail("tar data");
  }
  void close() {
    if (archive_write_close(get()) != ARCHIVE_OK) rethrowOrFail("tar close");
  }

  [[noreturn]] void rethrowOrFail(const std::string& what) {
    archive_.rethrowStreamError();
    fail(what + ": " + archive_.errorText());
  }

 private:
  TarOutputArchive archive_;
};

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
      std::string path, problem;
      const char* name = archive_entry_pathname(entry);
      if (!name || !tryNormaliseRelativePath(name, path, problem, RootPath::Accept)) continue;
      if (path == "oci-layout") hasLayout = true;
      if (path == "index.json") hasIndex = true;
    }
  }
  hashing.drain();
  return {hasLayout && hasIndex, hashing.digest()};
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

fs::path ImageStore::imageDir(std::string_view digest) const { return root_ / "sha256" / std::string(digestHex(digest)); }

fs::path ImageStore::rootfsPath(const ImageInfo& image) const { return imageDir(image.digest) / "rootfs"; }

std::optional<ImageInfo> ImageStore::readInfoIfExists(std::string_view digest) const {
  auto text = readFileIfExists(imageDir(digest) / "image.json");
  if (!text) return std::nullopt;
  ErrorContext ctx("image " + std::string(digest));
  return ImageInfo::fromJson(parseImageJson(*text, "image.json"));
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
  if (isImageDigest(ref)) return readInfoIfExists(ref);

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
    if (!digestHex(image.digest).starts_with(prefix)) continue;
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
  return importRootfsTarWithDigest(tarball, name, "sha256:" + sha256FileHex(tarball));
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
    applyLayer(reader, pending.rootfs(), Whiteouts::Literal);
  }
  hashing.drain();
  if (hashing.digest() != digest) fail(ErrorKind::Conflict, "`" + tarball.string() + "` changed while importing");
  ImageInfo info;
  info.digest = digest;
  info.created = nowUtc(TimeFormat::Rfc3339Seconds);
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
    applyLayer(reader, staging.path() / "layout", Whiteouts::Literal);
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
    return parseImageJson(out, file);
  };
  auto version = readSmall("oci-layout").value("imageLayoutVersion", "");
  if (!version.starts_with("1.")) fail(ErrorKind::Unimplemented, "oci-layout version `" + version + "`");

  auto manifestDesc = selectManifest(layoutFd.get(), readSmall("index.json"), name, 0);
  ErrorContext ctx("manifest " + shortDigest(manifestDesc.digest));
  auto manifest = parseImageJson(readJsonBlob(layoutFd.get(), manifestDesc), "manifest");
  {
    std::lock_guard lock(mutex_);
    if (fs::exists(imageDir(manifestDesc.digest))) return addNameToExisting(manifestDesc.digest, name);
  }
  if (manifest.value("schemaVersion", 0) != 2) fail(ErrorKind::Unimplemented, "manifest schemaVersion is not 2");
  auto configDesc = parseDescriptor(manifest.value("config", nlohmann::json()), "config");
  auto config = parseImageJson(readJsonBlob(layoutFd.get(), configDesc), "config " + shortDigest(configDesc.digest));
  auto layers = manifest.value("layers", nlohmann::json::array());
  if (!layers.is_array()) fail(ErrorKind::InvalidInput, "manifest: layers is not a list");

  Pending pending(tmpDir());
  for (auto& layerJson : layers) {
    auto layer = parseDescriptor(layerJson, "layer");
    ErrorContext layerCtx("layer " + shortDigest(layer.digest));
    if (!isLayerMediaType(layer.mediaType)) fail(ErrorKind::Unimplemented, "media type `" + layer.mediaType + "`");
    Fd fd = openBlob(layoutFd.get(), layer);
    FdInputStream in(fd.get());
    HashingInputStream hashing(in);
    {
      TarReader reader(hashing);
      applyLayer(reader, pending.rootfs(), Whiteouts::Apply);
    }
    hashing.drain();
    // Verified after extraction to read each layer once; a mismatch discards the whole import.
    verifyBlob(layer, hashing);
  }

  ImageInfo info;
  info.digest = manifestDesc.digest;
  info.created = stringField(config, "created");
  if (info.created.empty()) info.created = nowUtc(TimeFormat::Rfc3339Seconds);
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
  if (archive_read_disk_open(disk.get(), rootfs.c_str()) != ARCHIVE_OK) fail("read " + rootfs + ": " + archiveErrorText(disk.get()));
  for (;;) {
    archive_entry_clear(entry.get());
    int r = archive_read_next_header2(disk.get(), entry.get());
    if (r == ARCHIVE_EOF) break;
    if (r == ARCHIVE_WARN) logWarn("image export: " + archiveErrorText(disk.get()));
    if (r < ARCHIVE_WARN) fail("read " + rootfs + ": " + archiveErrorText(disk.get()));
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
      if (r != ARCHIVE_EOF) fail("read `" + path + "`: " + archiveErrorText(disk.get()));
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
  auto info = ImageInfo::fromJson(parseImageJson(reader.readData(kMaxJsonBlob), "image.json"));
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
  applyLayer(reader, pending.rootfs(), Whiteouts::Literal, "rootfs");
  counting.drain();
  return commit(pending, std::move(info), "", /*adoptNamesOnlyIfFree=*/true);
}

}  // namespace migrate
