#include "agent/mount-guard.h"

#include <sys/mount.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include "agent/storage.h"
#include "common/error.h"
#include "common/files.h"

using namespace migrate;

namespace {

// Mounting needs CAP_SYS_ADMIN; the guard's bookkeeping is tested without.
bool canMount() { return ::geteuid() == 0; }

fs::path mountTmpfs(const fs::path& dir) {
  fs::create_directories(dir);
  REQUIRE(::mount("tmpfs", dir.c_str(), "tmpfs", 0, "size=1m") == 0);
  return dir;
}

}  // namespace

TEST_CASE("a mount guard unmounts once when it dies, and not after release") {
  if (!canMount()) {
    WARN("skipped: mounting needs root");
    return;
  }
  TempDir dir(fs::temp_directory_path(), "mount-guard-test");
  auto point = dir.path() / "m";
  {
    MountGuard guard(mountTmpfs(point));
    CHECK(isMountPoint(point));
  }
  CHECK_FALSE(isMountPoint(point));
  {
    MountGuard guard(mountTmpfs(point));
    guard.release();
  }
  CHECK(isMountPoint(point));
  unmountLazily(point);
  CHECK_FALSE(isMountPoint(point));
}

TEST_CASE("a mount guard moves its mount and reports a failed unmount") {
  if (!canMount()) {
    WARN("skipped: mounting needs root");
    return;
  }
  TempDir dir(fs::temp_directory_path(), "mount-guard-test");
  auto point = dir.path() / "m";
  MountGuard outer;
  {
    MountGuard inner(mountTmpfs(point));
    outer = std::move(inner);
    CHECK_FALSE(inner);
  }
  CHECK(isMountPoint(point));
  outer.unmount();
  CHECK_FALSE(outer);
  CHECK_FALSE(isMountPoint(point));
  // Nothing mounted there any more: unmount() says so, once.
  MountGuard stale(point);
  CHECK_THROWS_AS(stale.unmount(), Error);
  CHECK_NOTHROW(stale.unmount());
}

TEST_CASE("unmountLazily ignores a missing mount only when told to") {
  TempDir dir(fs::temp_directory_path(), "mount-guard-test");
  CHECK_THROWS_AS(unmountLazily(dir.path()), Error);
  CHECK_NOTHROW(unmountLazily(dir.path(), NotMounted::Ignore));
  CHECK_NOTHROW(unmountLazily(dir.path() / "gone", NotMounted::Ignore));
}

TEST_CASE("an empty mount guard owns nothing") {
  MountGuard guard;
  CHECK_FALSE(guard);
  CHECK_NOTHROW(guard.unmount());
}
