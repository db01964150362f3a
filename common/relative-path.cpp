#include "common/relative-path.h"

#include "common/error.h"

namespace migrate {

namespace {

// Longer paths cannot be created by the kernel anyway; refusing early keeps
// hostile input from making us split megabyte-long names.
constexpr size_t kMaxPathLength = 4096;

}  // namespace

bool tryNormaliseRelativePath(std::string_view path, std::string& out, std::string& problem, RootPath root) {
  out.clear();
  if (path.empty() && root == RootPath::Refuse) {
    problem = "empty path";
    return false;
  }
  if (path.size() > kMaxPathLength) {
    problem = "path longer than 4096 bytes";
    return false;
  }
  if (!path.empty() && path.front() == '/') {
    problem = "absolute path";
    return false;
  }
  size_t pos = 0;
  while (pos <= path.size()) {
    size_t end = path.find('/', pos);
    if (end == std::string_view::npos) end = path.size();
    auto component = path.substr(pos, end - pos);
    pos = end + 1;
    if (component.empty() || component == ".") continue;
    if (component == "..") {
      problem = "`..` component in path";
      return false;
    }
    if (component.find('\0') != std::string_view::npos) {
      problem = "NUL byte in path";
      return false;
    }
    if (!out.empty()) out += '/';
    out += component;
  }
  if (out.empty() && root == RootPath::Refuse) {
    problem = "empty path";
    return false;
  }
  return true;
}

std::string normaliseRelativePath(std::string_view path, RootPath root) {
  std::string out, problem;
  if (!tryNormaliseRelativePath(path, out, problem, root)) fail(ErrorKind::InvalidInput, problem);
  return out;
}

std::pair<std::string, std::string> splitParent(const std::string& path) {
  auto slash = path.rfind('/');
  if (slash == std::string::npos) return {"", path};
  return {path.substr(0, slash), path.substr(slash + 1)};
}

std::string joinPath(const std::string& dir, const std::string& name) { return dir.empty() ? name : dir + "/" + name; }

}  // namespace migrate
