#include "agent/trash.h"

#include <catch2/catch.hpp>
#include <chrono>
#include <fstream>
#include <thread>

#include "common/files.h"

using namespace migrate;
namespace fs = std::filesystem;

namespace {

// A directory of `files` files, like a container's writable layer.
fs::path makeTree(const fs::path& at, int files) {
  fs::create_directories(at / "upper" / "files");
  for (int i = 0; i < files; ++i) std::ofstream(at / "upper" / "files" / ("f" + std::to_string(i))) << "x";
  return at;
}

bool emptyDir(const fs::path& dir) { return fs::is_empty(dir); }

}  // namespace

TEST_CASE("a discarded directory is gone from its place at once and deleted from the trash in the background",
          "[trash]") {
  TempDir state(fs::temp_directory_path(), "trash-test");
  fs::path containers = state.path() / "containers";
  {
    Trash trash(state.path() / "trash");
    fs::path a = makeTree(containers / "0123", 2000);
    trash.discard(a);
    CHECK_FALSE(fs::exists(a));
    // The same name again before the first is deleted: both go.
    fs::path again = makeTree(containers / "0123", 10);
    trash.discard(again);
    CHECK_FALSE(fs::exists(again));
    trash.discard(containers / "never-was");  // nothing to do
    for (int i = 0; i < 200 && !emptyDir(state.path() / "trash"); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    CHECK(emptyDir(state.path() / "trash"));
  }
  // What a killed agent left there goes with the next one that holds the
  // trash (the daemon); a one-shot command beside it leaves it alone.
  {
    Trash daemon(state.path() / "trash");
    makeTree(state.path() / "trash" / "left.123", 50);
    { Trash oneShot(state.path() / "trash"); }
    CHECK(fs::exists(state.path() / "trash" / "left.123"));
  }
  { Trash next(state.path() / "trash"); }  // the destructor waits for it
  CHECK(emptyDir(state.path() / "trash"));
}
