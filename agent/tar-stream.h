// libarchive over our byte streams (common/stream.h): the one place where a
// tar is read from an InputStream or written to an OutputStream. The bundle
// reader and writer and the image store each set their own formats and
// options on get() before open(), and report libarchive's errors in their
// own words; what they share is here: the callbacks, and carrying an
// exception thrown by the stream across libarchive's C frames (stored in the
// callback, libarchive told EIO, rethrown by rethrowStreamError()).
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <exception>
#include <functional>
#include <string>
#include <vector>

#include "common/stream.h"

struct archive;

namespace migrate {

// archive_error_string, or a placeholder when libarchive set none.
std::string archiveErrorText(archive* a);

// What passed between the stream and libarchive, as it passed: the bundle's
// signature covers the raw tar bytes (docs/design-notes.md).
using TarTap = std::function<void(const void* data, size_t size)>;

class TarInputArchive {
 public:
  // Reads `in` in chunks of up to `bufferBytes`.
  TarInputArchive(InputStream& in, size_t bufferBytes, TarTap tap = {});
  ~TarInputArchive();
  TarInputArchive(const TarInputArchive&) = delete;
  TarInputArchive& operator=(const TarInputArchive&) = delete;

  // For archive_read_support_*() before open(), and every read after.
  archive* get() const { return archive_; }
  // archive_read_open2 with our callback; returns libarchive's status.
  int open();
  // Rethrows what the stream threw inside libarchive, if it did; call first
  // on any failed status, before reporting libarchive's own error.
  void rethrowStreamError();
  std::string errorText() const { return archiveErrorText(archive_); }

 private:
  static ssize_t readCallback(archive* a, void* self, const void** buffer);

  InputStream& in_;
  std::vector<char> buffer_;
  TarTap tap_;
  archive* archive_;
  std::exception_ptr streamError_;
};

class TarOutputArchive {
 public:
  explicit TarOutputArchive(OutputStream& out, TarTap tap = {});
  ~TarOutputArchive();
  TarOutputArchive(const TarOutputArchive&) = delete;
  TarOutputArchive& operator=(const TarOutputArchive&) = delete;

  // For archive_write_set_format_*() and blocking options before open().
  archive* get() const { return archive_; }
  // archive_write_open2 with our callback; returns libarchive's status.
  int open();
  void rethrowStreamError();
  std::string errorText() const { return archiveErrorText(archive_); }

 private:
  static ssize_t writeCallback(archive* a, void* self, const void* buffer, size_t length);

  OutputStream& out_;
  TarTap tap_;
  archive* archive_;
  std::exception_ptr streamError_;
};

}  // namespace migrate
