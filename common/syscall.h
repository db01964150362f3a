// One syscall wrapper (KJ_SYSCALL): retries EINTR, throws Error with errno and
// the call's text. Usage: int n = SYSCALL(read(fd, buf, len), "read", path);
#pragma once

#include <cerrno>
#include <string>

#include "common/error.h"

namespace migrate {

namespace detail {
inline std::string describe() { return {}; }
template <typename First, typename... Rest>
std::string describe(const First& first, const Rest&... rest) {
  std::string s = std::string(first);
  ((s += " ", s += std::string(rest)), ...);
  return s;
}
}  // namespace detail

#define SYSCALL(call, ...)                                                \
  ([&]() {                                                                \
    for (;;) {                                                            \
      auto _result = (call);                                              \
      if (_result >= 0) return _result;                                   \
      if (errno == EINTR) continue;                                       \
      ::migrate::failErrno(errno, ::migrate::detail::describe(__VA_ARGS__)); \
    }                                                                     \
  }())

}  // namespace migrate
