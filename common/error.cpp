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

void failErrno(int err, std::string_view what) {
  ErrorKind kind = ErrorKind::Failed;
  switch (err) {
    case ENOSPC:
    case EDQUOT:
    case ENOMEM:
    case EMFILE:
    case ENFILE:
    case EAGAIN:
      kind = ErrorKind::Overloaded;
      break;
    case ENOENT:
    case ESRCH:
      kind = ErrorKind::NotFound;
      break;
    case EEXIST:
    case EBUSY:
    case EADDRINUSE:
      kind = ErrorKind::Conflict;
      break;
    case ECONNRESET:
    case ECONNREFUSED:
    case EPIPE:
    case ETIMEDOUT:
      kind = ErrorKind::Disconnected;
      break;
    case EINVAL:
      kind = ErrorKind::InvalidInput;
      break;
    default:
      break;
  }
  fail(kind, std::string(what) + ": " + std::strerror(err));
}

ErrorContext::ErrorContext(std::string what) { contextStack.push_back(std::move(what)); }
ErrorContext::~ErrorContext() { contextStack.pop_back(); }

ErrorKind kindOf(const std::exception& e) {
  if (auto* err = dynamic_cast<const Error*>(&e)) return err->kind();
  return ErrorKind::Failed;
}

}  // namespace migrate
