#include "tests/support/hostile-bundle.h"

#include <fcntl.h>

#include "agent/bundle-reader.h"
#include "agent/bundle-writer.h"
#include "common/zstd-stream.h"

namespace migrate::test {

HostileBundle::HostileBundle(const fs::path& bundle) : scratch_("/var/tmp", "hostile-bundle"), dir_(scratch_.path() / "b") {
  fs::create_directory(dir_);
  Fd fd = openOrFail(bundle, O_RDONLY);
  FdInputStream file(fd.get());
  ZstdInputStream in(file);
  readBundle(in, dir_);
}

void HostileBundle::repack(const fs::path& out) const {
  BundleSources sources;
  sources.manifest = BundleManifest::fromJson(nlohmann::json::parse(readFile(dir_ / "manifest.json")));
  sources.configDump = dir_ / "config.dump";
  sources.specDump = dir_ / "spec.dump";
  sources.networkStatus = dir_ / "network.status";
  sources.ctrLog = dir_ / "ctr.log";
  sources.statsDump = dir_ / "stats-dump";
  sources.checkpointDir = dir_ / "checkpoint";
  if (fs::exists(dir_ / "rootfs-diff")) sources.upperDir = dir_ / "rootfs-diff";
  Fd fd = openOrFail(out, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  FdOutputStream file(fd.get());
  ZstdOutputStream zstd(file);
  writeBundle(sources, zstd);
  zstd.finish();
}

}  // namespace migrate::test
