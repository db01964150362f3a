#include "common/zstd-stream.h"

// ZSTD_getFrameProgression is in zstd's experimental section (stable since
// 1.3.x, exported by Debian's libzstd.so.1), read again with it enabled.
#define ZSTD_STATIC_LINKING_ONLY
#include <zstd.h>

#include <new>
#include <string>

#include "common/error.h"

namespace migrate {

namespace {

void checkCompress(size_t ret, const char* what) {
  if (ZSTD_isError(ret)) fail(std::string("zstd: ") + what + ": " + ZSTD_getErrorName(ret));
}

}  // namespace

ZstdOutputStream::ZstdOutputStream(OutputStream& inner, int level, int threads)
    : inner_(inner),
      ctx_(ZSTD_createCCtx()),
      out_(ZSTD_CStreamOutSize()),
      level_(level),
      adaptive_(threads > 0 && level > kIncompressibleLevel),
      current_(level) {
  if (!ctx_) throw std::bad_alloc();
  try {
    checkCompress(ZSTD_CCtx_setParameter(ctx_, ZSTD_c_compressionLevel, level), "set level");
    checkCompress(ZSTD_CCtx_setParameter(ctx_, ZSTD_c_checksumFlag, 1), "enable checksum");
    if (threads > 0) {
      // Fails if libzstd was built without ZSTD_MULTITHREAD; Debian's is.
      checkCompress(ZSTD_CCtx_setParameter(ctx_, ZSTD_c_nbWorkers, threads), "set worker threads");
    }
  } catch (...) {
    ZSTD_freeCCtx(ctx_);
    throw;
  }
}

ZstdOutputStream::~ZstdOutputStream() { ZSTD_freeCCtx(ctx_); }

void ZstdOutputStream::compress(ZSTD_inBuffer& in, ZSTD_EndDirective mode) {
  for (;;) {
    ZSTD_outBuffer out{out_.data(), out_.size(), 0};
    size_t remaining = ZSTD_compressStream2(ctx_, &out, &in, mode);
    checkCompress(remaining, "compress");
    if (out.pos > 0) inner_.write(out_.data(), out.pos);
    bool done = mode == ZSTD_e_continue ? in.pos == in.size : remaining == 0;
    if (done) return;
  }
}

void ZstdOutputStream::write(const void* data, size_t size) {
  if (finished_) fail("zstd: write after finish");
  ZSTD_inBuffer in{data, size, 0};
  compress(in, ZSTD_e_continue);
  if (adaptive_) adaptLevel();
}

void ZstdOutputStream::adaptLevel() {
  // What the workers have compressed so far, and made of it: output lags
  // input by up to a job, so the ratio is taken over what was consumed.
  ZSTD_frameProgression p = ZSTD_getFrameProgression(ctx_);
  unsigned long long consumed = p.consumed - windowConsumed_;
  if (consumed < kAdaptWindow) return;
  unsigned long long produced = p.produced - windowProduced_;
  windowConsumed_ = p.consumed;
  windowProduced_ = p.produced;
  int next = current_;
  if (produced * 100 >= consumed * 98) next = kIncompressibleLevel;
  else if (produced * 100 < consumed * 90) next = level_;
  if (next == current_) return;
  checkCompress(ZSTD_CCtx_setParameter(ctx_, ZSTD_c_compressionLevel, next), "change level");
  current_ = next;
  ++levelChanges_;
}

void ZstdOutputStream::finish() {
  if (finished_) return;
  ZSTD_inBuffer in{nullptr, 0, 0};
  compress(in, ZSTD_e_end);
  finished_ = true;
  inner_.finish();
}

ZstdInputStream::ZstdInputStream(InputStream& inner)
    : inner_(inner), ctx_(ZSTD_createDCtx()), in_(ZSTD_DStreamInSize()) {
  if (!ctx_) throw std::bad_alloc();
}

ZstdInputStream::~ZstdInputStream() { ZSTD_freeDCtx(ctx_); }

size_t ZstdInputStream::read(void* buffer, size_t size) {
  if (size == 0 || ended_) return 0;
  ZSTD_outBuffer out{buffer, size, 0};
  for (;;) {
    if (inBuf_.pos == inBuf_.size && !outputPending_) {
      size_t n = inner_.read(in_.data(), in_.size());
      if (n == 0) {
        if (!sawInput_) fail(ErrorKind::InvalidInput, "zstd: stream truncated: no data");
        if (!frameComplete_) fail(ErrorKind::InvalidInput, "zstd: stream truncated: it ends inside a frame");
        ended_ = true;
        return 0;
      }
      sawInput_ = true;
      inBuf_ = {in_.data(), n, 0};
    }
    size_t ret = ZSTD_decompressStream(ctx_, &out, &inBuf_);
    if (ZSTD_isError(ret)) {
      fail(ErrorKind::InvalidInput, std::string("zstd: corrupt stream: ") + ZSTD_getErrorName(ret));
    }
    frameComplete_ = ret == 0;
    // zstd's contract: only when the output buffer came back full may the
    // decoder still hold decoded bytes, to be fetched without new input.
    outputPending_ = out.pos == out.size;
    if (out.pos > 0) return out.pos;
  }
}

}  // namespace migrate
