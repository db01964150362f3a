// Errors that tell the caller what to do next.
//
// Every failure carries a Kind (KJ's exception types, widened a little): the
// coordinator retries, rolls back or gives up by kind, never by parsing text.
// Context frames (ErrorContext) attach "what we were doing" once per scope, so
// a throw deep inside reads "restore of `web`: criu: ...: <cause>".
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

namespace migrate {

enum class ErrorKind {
  Failed,         // Something went wrong; retrying the same thing will not help.
  Overloaded,     // Out of a resource (disk, memory, slots); may succeed later.
  Disconnected,   // A peer or process went away; retry on a fresh connection.
  Unimplemented,  // The peer or this build does not support the request.
  InvalidInput,   // The request or data is malformed or hostile; fix the input.
  NotFound,       // The named object does not exist.
  Conflict,       // The name, address or object is already taken or busy.
  Cancelled,      // Stopped on request (migrate cancel); nothing to retry.
};

std::string_view kindName(ErrorKind kind);
ErrorKind kindFromName(std::string_view name);

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, std::string message);
  ErrorKind kind() const { return kind_; }

 private:
  ErrorKind kind_;
};

// Throws Error(kind, message) with the active ErrorContext frames prepended.
[[noreturn]] void fail(ErrorKind kind, std::string message);
[[noreturn]] inline void fail(std::string message) { fail(ErrorKind::Failed, std::move(message)); }

// What errno `err` tells the caller to do: ENOSPC/ENOMEM/EMFILE map to
// Overloaded, ENOENT to NotFound, EEXIST/EBUSY to Conflict, ECONNRESET/EPIPE
// to Disconnected, EINVAL to InvalidInput; the rest to Failed.
ErrorKind kindOfErrno(int err);
// The same for an error_code whose category maps to errno (generic, system;
// std::filesystem uses these); Failed for any other category.
ErrorKind kindOfErrorCode(const std::error_code& code);

// Throws Error(kindOfErrno(err)) naming the call: "open(/x): No such file".
[[noreturn]] void failErrno(int err, std::string_view what);

// While alive, every Error thrown on this thread is prefixed with `what`.
class ErrorContext {
 public:
  explicit ErrorContext(std::string what);
  ~ErrorContext();
  ErrorContext(const ErrorContext&) = delete;
  ErrorContext& operator=(const ErrorContext&) = delete;
};

// Kind of any exception: Error's own; std::system_error's (and so
// std::filesystem::filesystem_error's) by its code, as failErrno maps errno;
// Failed for everything else.
ErrorKind kindOf(const std::exception& e);

}  // namespace migrate
