#include "common/syscall.h"

#include <cstring>

namespace migrate::detail {

namespace {
constexpr size_t kMaxArgumentsShown = 40;
}  // namespace

std::string abbreviateCall(std::string_view call) {
  if (call.starts_with("::")) call.remove_prefix(2);
  auto open = call.find('(');
  if (open == std::string_view::npos || call.empty() || call.back() != ')' || call.size() - open - 2 <= kMaxArgumentsShown) {
    return std::string(call);
  }
  // Keep whole top-level arguments while they fit; nested parentheses,
  // brackets and braces (casts, calls, initialisers) stay with their argument.
  std::string_view arguments = call.substr(open + 1, call.size() - open - 2);
  size_t kept = 0;  // arguments[0, kept) is shown
  int depth = 0;
  for (size_t i = 0; i < arguments.size() && i <= kMaxArgumentsShown; ++i) {
    char c = arguments[i];
    if (c == '(' || c == '[' || c == '{') ++depth;
    else if (c == ')' || c == ']' || c == '}') --depth;
    else if (c == ',' && depth == 0) kept = i;
  }
  std::string out(call.substr(0, open + 1));
  if (kept > 0) {
    out += arguments.substr(0, kept);
    out += ", ";
  }
  out += "...)";
  return out;
}

void failSyscall(int err, std::string_view call, std::string_view file, int line, const std::string& what) {
#ifdef MIGRATE_SOURCE_DIR
  // CMake compiles with absolute paths, so __FILE__ names the build machine's tree.
  if (file.starts_with(MIGRATE_SOURCE_DIR)) file.remove_prefix(std::string_view(MIGRATE_SOURCE_DIR).size());
#endif
  // ccache's base_dir rewrites them relative to the build dir ("../../common/x.cpp").
  while (file.starts_with("../")) file.remove_prefix(3);
  std::string where = std::string(file) + ":" + std::to_string(line);
  std::string shown = abbreviateCall(call);
  std::string message = what.empty() ? shown + ": " + std::strerror(err) + " (at " + where + ")"
                                     : what + ": " + std::strerror(err) + " (" + shown + " at " + where + ")";
  fail(kindOfErrno(err), std::move(message));
}

}  // namespace migrate::detail
