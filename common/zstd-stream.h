// zstd compression as stream decorators (KJ's GzipOutputStream/GzipInputStream).
// The bundle travels as tar -> ZstdOutputStream -> hash -> TLS; the target
// unwinds the same chain with ZstdInputStream while the bytes arrive.
#pragma once

#include <zstd.h>

#include <vector>

#include "common/stream.h"

namespace migrate {

class ZstdOutputStream final : public OutputStream {
 public:
  // `threads` > 0 compresses on that many zstd worker threads
  // (ZSTD_c_nbWorkers); 0 compresses on the caller's thread.
  explicit ZstdOutputStream(OutputStream& inner, int level = 3, int threads = 0);
  ~ZstdOutputStream() override;
  ZstdOutputStream(const ZstdOutputStream&) = delete;
  ZstdOutputStream& operator=(const ZstdOutputStream&) = delete;

  void write(const void* data, size_t size) override;
  // Ends the zstd frame, then finishes `inner`.
  void finish() override;

 private:
  void compress(ZSTD_inBuffer& in, ZSTD_EndDirective mode);

  OutputStream& inner_;
  ZSTD_CCtx* ctx_;
  std::vector<char> out_;
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
