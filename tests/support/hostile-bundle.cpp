#include "tests/support/hostile-bundle.h"

#include <fcntl.h>

#include "agent/bundle-reader.h"
#include "agent/bundle-writer.h"
#include "common/signing.h"
#include "common/zstd-stream.h"

namespace migrate::test {

HostileBundle::HostileBundle(const fs::path& bundle) : scratch_("/var/tmp", "hostile-bundle"), dir_(scratch_.path() / "b") {
  fs::create_directory(dir_);
  Fd fd = openOrFail(bundle, O_RDONLY);
  FdInputStream file(fd.get());
  ZstdInputStream in(file);
  readBundle(in, dir_);
}

void HostileBundle::repack(const fs::path& out, const AgentHome& signer) const {
  BundleSources sources;
  // The manifest as a test left it, identifiers unchecked: fromJson refuses
  // what a target must refuse, so it parses a copy with valid ones and the
  // raw strings are put back.
  auto raw = nlohmann::json::parse(readFile(dir_ / "manifest.json"));
  auto parsable = raw;
  parsable["containerName"] = "x";
  parsable["containerId"] = std::string(32, '0');
  parsable["imageDigest"] = "sha256:" + std::string(64, '0');
  parsable["sourceHost"] = "x";
  sources.manifest = BundleManifest::fromJson(parsable);
  sources.manifest.containerName = raw.value("containerName", "");
  sources.manifest.containerId = raw.value("containerId", "");
  sources.manifest.imageDigest = raw.value("imageDigest", "");
  sources.manifest.sourceHost = raw.value("sourceHost", "");
  sources.configDump = dir_ / "config.dump";
  sources.specDump = dir_ / "spec.dump";
  sources.networkStatus = dir_ / "network.status";
  sources.ctrLog = dir_ / "ctr.log";
  sources.statsDump = dir_ / "stats-dump";
  sources.checkpointDir = dir_ / "checkpoint";
  if (fs::exists(dir_ / "rootfs-diff")) sources.upperDir = dir_ / "rootfs-diff";
  auto key = SigningKey::loadOrCreate(signer.dir() / "signing.key");
  sources.signer = &key;
  Fd fd = openOrFail(out, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  FdOutputStream file(fd.get());
  ZstdOutputStream zstd(file);
  writeBundle(sources, zstd);
  zstd.finish();
}

}  // namespace migrate::test
