// One syscall wrapper (KJ_SYSCALL): retries EINTR, throws Error with errno,
// the caller's description, the call's text and where it was made.
//
//   int n = SYSCALL(::read(fd, buf, len), "read", path);
//
// fails with "read /x: Input/output error (read(fd, buf, len) at agent/runtime.cpp:203)";
// the kind is errno's (kindOfErrno). Long calls are shortened to their first
// arguments: "openat(dirFd, name.c_str(), ...)".
#pragma once

#include <cerrno>
#include <string>
#include <string_view>

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

// `call` as the preprocessor spelled it, shortened for a message: no leading
// "::", and arguments past about 40 characters replaced by "...".
std::string abbreviateCall(std::string_view call);

// Throws Error(kindOfErrno(err)): "<what>: <strerror> (<call> at <file>:<line>)";
// without `what`, the call leads: "<call>: <strerror> (at <file>:<line>)".
[[noreturn]] void failSyscall(int err, std::string_view call, std::string_view file, int line,
                              const std::string& what);
}  // namespace detail

// failSyscall shows __FILE__ relative to the source tree.
#define SYSCALL(call, ...)                                                                           \
  ([&]() {                                                                                           \
    for (;;) {                                                                                       \
      auto _result = (call);                                                                         \
      if (_result >= 0) return _result;                                                              \
      if (errno == EINTR) continue;                                                                  \
      int _err = errno;                                                                              \
      ::migrate::detail::failSyscall(_err, #call, __FILE__, __LINE__,                                \
                                     ::migrate::detail::describe(__VA_ARGS__));                      \
    }                                                                                                \
  }())

}  // namespace migrate
