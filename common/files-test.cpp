#include "common/files.h"

#include <fcntl.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include "common/error.h"

using namespace migrate;

TEST_CASE("atomic write replaces content and leaves no temp file") {
  TempDir dir(fs::temp_directory_path(), "files-test");
  auto path = dir.path() / "state.json";
  writeFileAtomic(path, "one");
  writeFileAtomic(path, "two");
  CHECK(readFile(path) == "two");
  int entries = 0;
  for (auto& e : fs::directory_iterator(dir.path())) {
    (void)e;
    ++entries;
  }
  CHECK(entries == 1);
  CHECK_FALSE(readFileIfExists(dir.path() / "missing"));
}

TEST_CASE("openBeneath refuses paths that leave the directory") {
  TempDir dir(fs::temp_directory_path(), "files-test");
  fs::create_directory(dir.path() / "sub");
  writeFileAtomic(dir.path() / "sub" / "ok", "x");
  fs::create_symlink("/etc/passwd", dir.path() / "sub" / "escape");
  auto root = openOrFail(dir.path(), O_RDONLY | O_DIRECTORY);
  CHECK(openBeneath(root.get(), "sub/ok", O_RDONLY));
  CHECK_THROWS_AS(openBeneath(root.get(), "../etc/passwd", O_RDONLY), Error);
  CHECK_THROWS_AS(openBeneath(root.get(), "sub/escape", O_RDONLY), Error);
  CHECK_THROWS_AS(openBeneath(root.get(), "/etc/passwd", O_RDONLY), Error);
}

TEST_CASE("openBeneath with Symlinks Refuse refuses even a symlink that stays inside") {
  TempDir dir(fs::temp_directory_path(), "files-test");
  fs::create_directory(dir.path() / "sub");
  writeFileAtomic(dir.path() / "sub" / "ok", "x");
  fs::create_symlink("ok", dir.path() / "sub" / "inside");
  auto root = openOrFail(dir.path(), O_RDONLY | O_DIRECTORY);
  CHECK(openBeneath(root.get(), "sub/inside", O_RDONLY));
  CHECK_THROWS_AS(openBeneath(root.get(), "sub/inside", O_RDONLY, 0, Symlinks::Refuse), Error);
  int error = 0;
  CHECK_FALSE(tryOpenBeneath(root.get(), "sub/inside", O_RDONLY, Symlinks::Refuse, error));
  CHECK(error == ELOOP);
  CHECK_FALSE(tryOpenBeneath(root.get(), "sub/missing", O_RDONLY, Symlinks::Refuse, error));
  CHECK(error == ENOENT);
  CHECK(tryOpenBeneath(root.get(), "", O_RDONLY | O_DIRECTORY, Symlinks::Refuse, error));
}

TEST_CASE("temp dir is removed with its guard unless kept") {
  fs::path kept, gone;
  {
    TempDir a(fs::temp_directory_path(), "files-test");
    TempDir b(fs::temp_directory_path(), "files-test");
    writeFileAtomic(a.path() / "f", "x");
    gone = a.path();
    kept = b.keep();
  }
  CHECK_FALSE(fs::exists(gone));
  CHECK(fs::exists(kept));
  removeTree(kept);
}

TEST_CASE("readFileTailIfExists returns at most the last N bytes") {
  TempDir dir(fs::temp_directory_path(), "files-test");
  auto path = dir.path() / "log";
  CHECK_FALSE(readFileTailIfExists(path, 10));
  writeFileAtomic(path, "0123456789abcdef");
  CHECK(readFileTailIfExists(path, 4) == "cdef");
  CHECK(readFileTailIfExists(path, 100) == "0123456789abcdef");
  CHECK(readFileTailIfExists(path, 0) == "");
}
