#include "agent/bundle-signature.h"

#include <algorithm>

#include "common/error.h"
#include "common/files.h"
#include "common/untrusted-json.h"

namespace migrate {

using nlohmann::json;

namespace {

constexpr std::string_view kStatementDomain = "migrate bundle signature\n";
// Enough for libarchive's read-ahead of one header (it reads 1 MiB chunks
// through BundleReader), with room for a long pax header.
constexpr size_t kKeepBackBytes = 4 << 20;

void addField(std::string& out, std::string_view name, std::string_view value) {
  out += name;
  out += ' ';
  out += std::to_string(value.size());
  out += ':';
  out += value;
  out += '\n';
}

std::string field(const json& j, const char* name) {
  auto it = j.find(name);
  if (it == j.end() || !it->is_string()) {
    fail(ErrorKind::InvalidInput, std::string("bundle signature: signature.json has no string `") + name + "`");
  }
  return it->get<std::string>();
}

std::string hexField(const json& j, const char* name, size_t bytes) {
  std::string text = field(j, name);
  if (text.size() != 2 * bytes) {
    fail(ErrorKind::InvalidInput, std::string("bundle signature: `") + name + "` must be " +
                                      std::to_string(2 * bytes) + " hex digits");
  }
  try {
    return fromHex(text);
  } catch (const Error&) {
    fail(ErrorKind::InvalidInput, std::string("bundle signature: `") + name + "` is not hex");
  }
}

}  // namespace

std::string BundleSignature::statement() const {
  std::string out(kStatementDomain);
  addField(out, "formatVersion", std::to_string(formatVersion));
  addField(out, "algorithm", algorithm);
  addField(out, "signer", signer);
  addField(out, "sourceHost", sourceHost);
  addField(out, "containerName", containerName);
  addField(out, "containerId", containerId);
  addField(out, "tarSha256", tarSha256);
  return out;
}

json BundleSignature::toJson() const {
  return {{"formatVersion", formatVersion}, {"algorithm", algorithm},         {"signer", publicKeyText(signer)},
          {"sourceHost", sourceHost},       {"containerName", containerName}, {"containerId", containerId},
          {"tarSha256", tarSha256},         {"signature", toHex(signature)}};
}

std::string BundleSignature::text() const { return toJson().dump(2) + "\n"; }

BundleSignature BundleSignature::fromJson(const json& j) {
  if (!j.is_object()) fail(ErrorKind::InvalidInput, "bundle signature: signature.json is not a JSON object");
  BundleSignature s;
  auto version = j.find("formatVersion");
  if (version == j.end() || !version->is_number_integer()) {
    fail(ErrorKind::InvalidInput, "bundle signature: signature.json has no integer `formatVersion`");
  }
  s.formatVersion = version->get<int>();
  s.algorithm = field(j, "algorithm");
  if (s.algorithm != "ed25519") {
    fail(ErrorKind::InvalidInput, "bundle signature: algorithm `" + s.algorithm.substr(0, 40) + "` is not supported");
  }
  try {
    s.signer = parsePublicKeyText(field(j, "signer"));
  } catch (const Error& e) {
    fail(ErrorKind::InvalidInput, std::string("bundle signature: `signer`: ") + e.what());
  }
  s.sourceHost = field(j, "sourceHost");
  s.containerName = field(j, "containerName");
  s.containerId = field(j, "containerId");
  s.tarSha256 = toHex(hexField(j, "tarSha256", 32));
  s.signature = hexField(j, "signature", kEd25519SignatureBytes);
  return s;
}

BundleSignature signBundle(const SigningKey& key, const BundleManifest& manifest, const std::string& tarSha256) {
  BundleSignature s;
  s.formatVersion = manifest.formatVersion;
  s.signer = key.publicKey();
  s.sourceHost = manifest.sourceHost;
  s.containerName = manifest.containerName;
  s.containerId = manifest.containerId;
  s.tarSha256 = tarSha256;
  s.signature = key.sign(s.statement());
  return s;
}

void TarDigestTap::add(const char* data, size_t size) {
  if (stopped_ || size == 0) return;
  recent_.emplace_back(data, size);
  recentBytes_ += size;
  while (recent_.size() > 1 && recentBytes_ - recent_.front().size() >= kKeepBackBytes) {
    hash_.update(recent_.front().data(), recent_.front().size());
    hashedEnd_ += recent_.front().size();
    recentBytes_ -= recent_.front().size();
    recent_.pop_front();
  }
}

std::string TarDigestTap::digestBefore(uint64_t offset) {
  if (stopped_) fail("bundle signature: the tar digest was taken already");
  stopped_ = true;
  if (offset < hashedEnd_ || offset > hashedEnd_ + recentBytes_) {
    fail(ErrorKind::InvalidInput, "bundle signature: signature.json's tar header is too long to verify");
  }
  uint64_t left = offset - hashedEnd_;
  for (auto& chunk : recent_) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(left, chunk.size()));
    hash_.update(chunk.data(), n);
    left -= n;
    if (left == 0) break;
  }
  recent_.clear();
  recentBytes_ = 0;
  return hash_.hexDigest();
}

BundleTrust BundleTrust::onlyKey(const std::string& publicKey, const std::string& sourceHost) {
  BundleTrust trust;
  trust.keys.push_back({publicKey, "the coordinator's key for `" + sourceHost + "`"});
  trust.refusalHint = "the coordinator says `" + sourceHost + "` signs with " + publicKeyText(publicKey);
  return trust;
}

fs::path trustedSignersDir(const fs::path& stateDir) { return stateDir / "trusted-signers"; }

std::string readPublicKeyFile(const fs::path& path) {
  std::string text = readFile(path);
  auto end = text.find_first_of(" \t\r\n", text.find_first_not_of(" \t\r\n"));
  try {
    return parsePublicKeyText(text.substr(0, end));
  } catch (const Error& e) {
    fail(ErrorKind::InvalidInput, "public key file " + path.string() + ": " + e.what());
  }
}

BundleTrust BundleTrust::local(const fs::path& stateDir, const std::string& ownPublicKey,
                               const std::vector<fs::path>& extraKeyFiles, bool acceptUnsigned) {
  BundleTrust trust;
  trust.acceptUnsigned = acceptUnsigned;
  if (!ownPublicKey.empty()) trust.keys.push_back({ownPublicKey, "this agent's own key"});
  fs::path dir = trustedSignersDir(stateDir);
  std::vector<fs::path> files;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (it->path().extension() == ".pub") files.push_back(it->path());
  }
  std::sort(files.begin(), files.end());
  for (auto& file : files) trust.keys.push_back({readPublicKeyFile(file), file.string()});
  for (auto& file : extraKeyFiles) trust.keys.push_back({readPublicKeyFile(file), file.string() + " (--trusted-key)"});
  trust.refusalHint = "it is neither this agent's own key nor in " + dir.string() +
                      "/*.pub nor given with --trusted-key (pass --trust-unsigned to restore it anyway)";
  return trust;
}

std::string checkBundleSignature(const ReadSignature& read, const BundleManifest& manifest, const BundleTrust& trust) {
  if (!read.text) {
    if (trust.acceptUnsigned) return "UNSIGNED, accepted as asked (--trust-unsigned)";
    fail(ErrorKind::InvalidInput, "bundle signature: the bundle is unsigned (it has no " +
                                      std::string(bundle::kSignature) + "); " + trust.refusalHint);
  }
  json parsed = parseUntrustedJson(*read.text, "bundle signature: signature.json");
  BundleSignature s = BundleSignature::fromJson(parsed);
  if (s.text() != *read.text) {
    fail(ErrorKind::InvalidInput, "bundle signature: signature.json is not as its writer makes it (a changed byte?)");
  }

  // Integrity first, whatever the trust: these hold for every signed bundle.
  if (s.tarSha256 != read.tarSha256) {
    fail(ErrorKind::InvalidInput, "bundle signature: digest mismatch: the bundle's bytes hash to " + read.tarSha256 +
                                      " but were signed as " + s.tarSha256 +
                                      ", so an entry was changed after signing (a flipped byte?)");
  }
  if (!verifySignature(s.signer, s.statement(), s.signature)) {
    fail(ErrorKind::InvalidInput, "bundle signature: the signature by " + publicKeyText(s.signer) +
                                      " does not verify: signature.json was changed or forged");
  }
  if (s.formatVersion != manifest.formatVersion || s.sourceHost != manifest.sourceHost ||
      s.containerName != manifest.containerName || s.containerId != manifest.containerId) {
    fail(ErrorKind::InvalidInput, "bundle signature: signed for `" + s.containerName + "` (" + s.containerId +
                                      ") from `" + s.sourceHost + "`, but the manifest says `" +
                                      manifest.containerName + "` (" + manifest.containerId + ") from `" +
                                      manifest.sourceHost + "`");
  }

  for (auto& key : trust.keys) {
    if (key.publicKey == s.signer) return "signed by " + publicKeyText(s.signer) + " (" + key.label + ")";
  }
  if (trust.acceptUnsigned) {
    return "signed by unknown key " + publicKeyText(s.signer) + ", accepted as asked (--trust-unsigned)";
  }
  fail(ErrorKind::InvalidInput, "bundle signature: signed by unknown key " + publicKeyText(s.signer) +
                                    " (source host `" + s.sourceHost + "`): " + trust.refusalHint);
}

}  // namespace migrate
