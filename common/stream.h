// Byte streams as decorators (KJ's OutputStream/InputStream): tar writer, zstd,
// hash, TLS and counters each wrap the next, so a pipeline is assembled, e.g.
//   FdOutputStream fd(sock); TlsOutputStream tls(fd); HashingOutputStream h(tls); ZstdOutputStream z(h);
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace migrate {

class OutputStream {
 public:
  virtual ~OutputStream() = default;
  // Writes all of `data` or throws.
  virtual void write(const void* data, size_t size) = 0;
  // Flushes buffered data and writes any trailer (zstd frame end, TLS close);
  // the stream is unusable afterwards. Idempotent.
  virtual void finish() {}
};

class InputStream {
 public:
  virtual ~InputStream() = default;
  // Reads up to `size` bytes; returns 0 only at end of stream. Throws on error,
  // including a stream that ends before its format says it should.
  virtual size_t read(void* buffer, size_t size) = 0;
};

// Borrowed fd. Retries short writes and EINTR.
class FdOutputStream final : public OutputStream {
 public:
  explicit FdOutputStream(int fd) : fd_(fd) {}
  void write(const void* data, size_t size) override;

 private:
  int fd_;
};

class FdInputStream final : public InputStream {
 public:
  explicit FdInputStream(int fd) : fd_(fd) {}
  size_t read(void* buffer, size_t size) override;

 private:
  int fd_;
};

// Counts bytes passing through; `onProgress` (if set) sees the running total.
class CountingOutputStream final : public OutputStream {
 public:
  explicit CountingOutputStream(OutputStream& inner) : inner_(inner) {}
  void write(const void* data, size_t size) override {
    inner_.write(data, size);
    count_ += size;
  }
  void finish() override { inner_.finish(); }
  uint64_t count() const { return count_; }

 private:
  OutputStream& inner_;
  uint64_t count_ = 0;
};

class CountingInputStream final : public InputStream {
 public:
  explicit CountingInputStream(InputStream& inner) : inner_(inner) {}
  size_t read(void* buffer, size_t size) override {
    size_t n = inner_.read(buffer, size);
    count_ += n;
    return n;
  }
  uint64_t count() const { return count_; }

 private:
  InputStream& inner_;
  uint64_t count_ = 0;
};

// Collects everything in memory; for tests and small messages only.
class StringOutputStream final : public OutputStream {
 public:
  void write(const void* data, size_t size) override { data_.append(static_cast<const char*>(data), size); }
  const std::string& data() const { return data_; }

 private:
  std::string data_;
};

class StringInputStream final : public InputStream {
 public:
  explicit StringInputStream(std::string data) : data_(std::move(data)) {}
  size_t read(void* buffer, size_t size) override;

 private:
  std::string data_;
  size_t pos_ = 0;
};

}  // namespace migrate
