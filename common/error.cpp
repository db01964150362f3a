#include "common/error.h"

#include <cerrno>
#include <cstring>

namespace migrate {

namespace {

thread_local std::vector<std::string> contextStack;

struct KindName {
  ErrorKind kind;
  std::string_view name;
};

constexpr KindName kKindNames[] = {
    {ErrorKind::Failed, "failed"},
    {ErrorKind::Overloaded, "overloaded"},
    {ErrorKind::Disconnected, "disconnected"},
    {ErrorKind::Unimplemented, "unimplemented"},
    {ErrorKind::InvalidInput, "invalid-input"},
    {ErrorKind::NotFound, "not-found"},
    {ErrorKind::Conflict, "conflict"},
    {ErrorKind::Cancelled, "cancelled"},
};

}  // namespace

std::string_view kindName(ErrorKind kind) {
  for (auto& k : kKindNames) {
    if (k.kind == kind) return k.name;
  }
  return "failed";
}

ErrorKind kindFromName(std::string_view name) {
  for (auto& k : kKindNames) {
    if (k.name == name) return k.kind;
  }
  return ErrorKind::Failed;
}

Error::Error(ErrorKind kind, std::string message)
    : std::runtime_error(std::move(message)), kind_(kind) {}

void fail(ErrorKind kind, std::string message) {
  std::string full;
  for (auto& frame : contextStack) {
    full += frame;
    full += ": ";
  }
  full += message;
  throw Error(kind, std::move(full));
}

ErrorKind kindOfErrno(int err) {
  switch (err) {
    case ENOSPC:
    case EDQUOT:
    case ENOMEM:
    case EMFILE:
    case ENFILE:
    case EAGAIN:
      return ErrorKind::Overloaded;
    case ENOENT:
    case ESRCH:
      return ErrorKind::NotFound;
    case EEXIST:
    case EBUSY:
    case EADDRINUSE:
      return ErrorKind::Conflict;
    case ECONNRESET:
    case ECONNREFUSED:
    case EPIPE:
    case ETIMEDOUT:
      return ErrorKind::Disconnected;
    case EINVAL:
      return ErrorKind::InvalidInput;
    default:
      return ErrorKind::Failed;
  }
}

ErrorKind kindOfErrorCode(const std::error_code& code) {
  if (!code) return ErrorKind::Failed;
  // Both hold errno values on Linux (std::filesystem reports in either).
  // Not via default_error_condition(): libstdc++ leaves errnos that std::errc
  // lacks (EDQUOT) in system_category. Other categories (iostream, future)
  // are not errno values.
  if (code.category() != std::generic_category() && code.category() != std::system_category()) {
    return ErrorKind::Failed;
  }
  return kindOfErrno(code.value());
}

void failErrno(int err, std::string_view what) {
  fail(kindOfErrno(err), std::string(what) + ": " + std::strerror(err));
}

ErrorContext::ErrorContext(std::string what) { contextStack.push_back(std::move(what)); }
ErrorContext::~ErrorContext() { contextStack.pop_back(); }

ErrorKind kindOf(const std::exception& e) {
  if (auto* err = dynamic_cast<const Error*>(&e)) return err->kind();
  if (auto* sys = dynamic_cast<const std::system_error*>(&e)) return kindOfErrorCode(sys->code());
  return ErrorKind::Failed;
}

}  // namespace migrate
