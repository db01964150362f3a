#include "common/stream.h"

#include <unistd.h>

#include <cstring>

#include "common/syscall.h"

namespace migrate {

void FdOutputStream::write(const void* data, size_t size) {
  auto* p = static_cast<const char*>(data);
  while (size > 0) {
    auto n = static_cast<size_t>(SYSCALL(::write(fd_, p, size), "write to stream"));
    p += n;
    size -= n;
  }
}

size_t FdInputStream::read(void* buffer, size_t size) {
  return static_cast<size_t>(SYSCALL(::read(fd_, buffer, size), "read from stream"));
}

size_t StringInputStream::read(void* buffer, size_t size) {
  size_t n = std::min(size, data_.size() - pos_);
  std::memcpy(buffer, data_.data() + pos_, n);
  pos_ += n;
  return n;
}

}  // namespace migrate
