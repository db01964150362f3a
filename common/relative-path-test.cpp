#include "common/relative-path.h"

#include <catch2/catch.hpp>

#include "common/error.h"

using namespace migrate;

namespace {

std::string problemOf(std::string_view path, RootPath root = RootPath::Refuse) {
  std::string out, problem;
  if (tryNormaliseRelativePath(path, out, problem, root)) return "accepted as `" + out + "`";
  return problem;
}

}  // namespace

TEST_CASE("normaliseRelativePath drops empty and dot components") {
  CHECK(normaliseRelativePath("a//b/./c/") == "a/b/c");
  CHECK(normaliseRelativePath("./a") == "a");
}

TEST_CASE("normaliseRelativePath refuses what could leave the directory") {
  CHECK(problemOf("/etc/passwd") == "absolute path");
  CHECK(problemOf("a/../../b") == "`..` component in path");
  CHECK(problemOf("..") == "`..` component in path");
  CHECK(problemOf(std::string("a\0b", 3)) == "NUL byte in path");
  CHECK(problemOf(std::string(4097, 'a')) == "path longer than 4096 bytes");
  CHECK_THROWS_AS(normaliseRelativePath("../x"), Error);
}

TEST_CASE("the root itself is refused or accepted as asked") {
  CHECK(problemOf("") == "empty path");
  CHECK(problemOf("./") == "empty path");
  CHECK(problemOf("", RootPath::Accept) == "accepted as ``");
  CHECK(problemOf("./", RootPath::Accept) == "accepted as ``");
  CHECK(problemOf("/", RootPath::Accept) == "absolute path");
}

TEST_CASE("splitParent and joinPath take a normalised path apart and back") {
  CHECK(splitParent("a/b/c") == std::pair<std::string, std::string>("a/b", "c"));
  CHECK(splitParent("c") == std::pair<std::string, std::string>("", "c"));
  CHECK(joinPath("a/b", "c") == "a/b/c");
  CHECK(joinPath("", "c") == "c");
}
