#include "agent/oci-layout.h"

#include <fcntl.h>

#include <set>

#include "agent/identifiers.h"
#include "common/error.h"
#include "common/files.h"
#include "common/untrusted-json.h"

namespace migrate {

namespace {

constexpr const char* kRefNameAnnotation = "org.opencontainers.image.ref.name";

#if defined(__x86_64__)
constexpr const char* kArchitecture = "amd64";
#elif defined(__aarch64__)
constexpr const char* kArchitecture = "arm64";
#else
#error "add this architecture's OCI name"
#endif

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

}  // namespace

nlohmann::json parseImageJson(std::string_view text, std::string_view what) {
  auto json = parseUntrustedJson(text, what);
  if (!json.is_object()) fail(ErrorKind::InvalidInput, std::string(what) + ": not a JSON object");
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

std::string checkedDigest(const nlohmann::json& value, std::string_view what) {
  if (!value.is_string()) fail(ErrorKind::InvalidInput, std::string(what) + ": digest missing");
  auto digest = value.get<std::string>();
  if (!isImageDigest(digest)) {
    if (!digest.starts_with("sha256:")) {
      fail(ErrorKind::Unimplemented, std::string(what) + ": digest `" + digest + "`: only sha256 is supported");
    }
    fail(ErrorKind::InvalidInput, std::string(what) + ": malformed digest `" + digest + "`");
  }
  return digest;
}

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
    return openBeneath(layoutFd, "blobs/sha256/" + std::string(digestHex(d.digest)), O_RDONLY);
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
    auto nested = parseImageJson(readJsonBlob(layoutFd, *chosen), "index " + chosen->digest);
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

bool isLayerMediaType(const std::string& mediaType) { return kLayerTypes.count(mediaType) > 0; }

}  // namespace migrate
