#include "agent/tar-stream.h"

#include <archive.h>

#include <cerrno>
#include <new>
#include <utility>

namespace migrate {

std::string archiveErrorText(archive* a) {
  const char* message = archive_error_string(a);
  return message ? message : "unknown libarchive error";
}

TarInputArchive::TarInputArchive(InputStream& in, size_t bufferBytes, TarTap tap)
    : in_(in), buffer_(bufferBytes), tap_(std::move(tap)), archive_(archive_read_new()) {
  if (!archive_) throw std::bad_alloc();
}

TarInputArchive::~TarInputArchive() { archive_read_free(archive_); }

int TarInputArchive::open() {
  return archive_read_open2(archive_, this, nullptr, &TarInputArchive::readCallback, nullptr, nullptr);
}

la_ssize_t TarInputArchive::readCallback(archive* a, void* client, const void** buffer) {
  auto* self = static_cast<TarInputArchive*>(client);
  try {
    size_t n = self->in_.read(self->buffer_.data(), self->buffer_.size());
    if (self->tap_) self->tap_(self->buffer_.data(), n);
    *buffer = self->buffer_.data();
    return static_cast<la_ssize_t>(n);
  } catch (...) {
    self->streamError_ = std::current_exception();
    archive_set_error(a, EIO, "input stream failed");
    return -1;
  }
}

void TarInputArchive::rethrowStreamError() {
  if (streamError_) std::rethrow_exception(std::exchange(streamError_, nullptr));
}

TarOutputArchive::TarOutputArchive(OutputStream& out, TarTap tap)
    : out_(out), tap_(std::move(tap)), archive_(archive_write_new()) {
  if (!archive_) throw std::bad_alloc();
}

TarOutputArchive::~TarOutputArchive() { archive_write_free(archive_); }

int TarOutputArchive::open() {
  return archive_write_open2(archive_, this, nullptr, &TarOutputArchive::writeCallback, nullptr, nullptr);
}

la_ssize_t TarOutputArchive::writeCallback(archive* a, void* client, const void* buffer, size_t length) {
  auto* self = static_cast<TarOutputArchive*>(client);
  try {
    self->out_.write(buffer, length);
    if (self->tap_) self->tap_(buffer, length);
    return static_cast<la_ssize_t>(length);
  } catch (...) {
    self->streamError_ = std::current_exception();
    archive_set_error(a, EIO, "output stream failed");
    return -1;
  }
}

void TarOutputArchive::rethrowStreamError() {
  if (streamError_) std::rethrow_exception(std::exchange(streamError_, nullptr));
}

}  // namespace migrate
