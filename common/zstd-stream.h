// zstd compression as stream decorators (KJ's GzipOutputStream/GzipInputStream).
// The bundle travels as tar -> ZstdOutputStream -> TLS; the target
// unwinds the same chain with ZstdInputStream while the bytes arrive.
#pragma once

#include <zstd.h>

#include <vector>

#include "common/stream.h"

namespace migrate {

// With worker threads it also adapts its level to what it is given: data
// that does not compress (random pages, encrypted or compressed files)
// costs zstd's level-3 match search for nothing (512 MiB of random bytes on
// two workers here: 0.50-0.71 s of CPU at level 3, 0.41-0.48 s adapting,
// 0.39 s at level 1 throughout; docs/benchmarks.md). Each window
// of kAdaptWindow bytes that came out at least 98 % of its size turns the
// next ones to level 1; a window that comes out under 90 % turns them back.
// libzstd applies a new level within a frame only in its multi-threaded
// mode, from the next job (single-threaded, only from the next frame), so
// single-threaded keeps the level it was given.
class ZstdOutputStream final : public OutputStream {
 public:
  static constexpr size_t kAdaptWindow = 16 << 20;
  static constexpr int kIncompressibleLevel = 1;

  // `threads` > 0 compresses on that many zstd worker threads
  // (ZSTD_c_nbWorkers); 0 compresses on the caller's thread.
  explicit ZstdOutputStream(OutputStream& inner, int level = 3, int threads = 0);
  ~ZstdOutputStream() override;
  ZstdOutputStream(const ZstdOutputStream&) = delete;
  ZstdOutputStream& operator=(const ZstdOutputStream&) = delete;

  void write(const void* data, size_t size) override;
  // Ends the zstd frame, then finishes `inner`.
  void finish() override;

  int level() const { return current_; }  // the level compressing now
  int levelChanges() const { return levelChanges_; }

 private:
  void compress(ZSTD_inBuffer& in, ZSTD_EndDirective mode);
  void adaptLevel();

  OutputStream& inner_;
  ZSTD_CCtx* ctx_;
  std::vector<char> out_;
  const int level_;
  const bool adaptive_;
  int current_;
  int levelChanges_ = 0;
  // zstd's progression (consumed, produced) at the start of this window.
  unsigned long long windowConsumed_ = 0;
  unsigned long long windowProduced_ = 0;
  bool finished_ = false;
};

// Decompresses one or more concatenated zstd frames. A stream that ends inside
// a frame (or holds no frame at all) and corrupt data both throw
// Error(InvalidInput): the input came from another host and is not trusted.
// The decoder's window is capped at zstd's default limit (128 MiB), so a
// hostile frame cannot make us allocate more than that.
class ZstdInputStream final : public InputStream {
 public:
  explicit ZstdInputStream(InputStream& inner);
  ~ZstdInputStream() override;
  ZstdInputStream(const ZstdInputStream&) = delete;
  ZstdInputStream& operator=(const ZstdInputStream&) = delete;

  size_t read(void* buffer, size_t size) override;

 private:
  InputStream& inner_;
  ZSTD_DCtx* ctx_;
  std::vector<char> in_;
  ZSTD_inBuffer inBuf_{nullptr, 0, 0};
  bool sawInput_ = false;
  bool frameComplete_ = false;
  bool outputPending_ = false;  // the last call filled the caller's buffer; the decoder may hold more
  bool ended_ = false;
};

}  // namespace migrate
