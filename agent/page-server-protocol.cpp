#include "agent/page-server-protocol.h"

#include <algorithm>
#include <cstring>

#include "common/error.h"

namespace migrate {

namespace {

// criu/page-xfer.c
constexpr uint32_t kCmdGet = 7;
constexpr uint32_t kCmdClose = 0x1023;
constexpr uint32_t kCmdForceClose = 0x1024;
constexpr uint32_t kCmdRelayGaveUp = 0x7e01;  // ours: CRIU's commands are 1-8 and 0x1023-0x1024
constexpr uint32_t kCmdMask = 0xffff;  // the upper 16 bits carry flags
constexpr size_t kCloseAnswerBytes = 4;
constexpr size_t kChannelByte = 4;  // the padding after cmd

uint32_t commandBits(const std::string& raw) {
  uint32_t cmd;
  std::memcpy(&cmd, raw.data(), sizeof cmd);
  return cmd & kCmdMask;
}

uint64_t pageCount(const std::string& raw) {
  uint64_t n;
  std::memcpy(&n, raw.data() + 8, sizeof n);
  return n;
}

}  // namespace

PageCommand PageRequest::command() const {
  switch (commandBits(raw)) {
    case kCmdGet: return PageCommand::Get;
    case kCmdClose:
    case kCmdForceClose: return PageCommand::Close;
    case kCmdRelayGaveUp: return PageCommand::GaveUp;
    default: return PageCommand::Other;
  }
}

uint64_t PageRequest::pages() const { return pageCount(raw); }

uint64_t PageRequest::vaddr() const {
  uint64_t v;
  std::memcpy(&v, raw.data() + 16, sizeof v);
  return v;
}

uint64_t PageRequest::dstId() const {
  uint64_t v;
  std::memcpy(&v, raw.data() + 24, sizeof v);
  return v;
}

PageRequest PageRequest::withPages(uint64_t pages) const {
  PageRequest out{raw};
  std::memcpy(out.raw.data() + 8, &pages, sizeof pages);
  return out;
}

PageChannel PageRequest::channel() const {
  return raw[kChannelByte] == static_cast<char>(PageChannel::Bulk) ? PageChannel::Bulk : PageChannel::Urgent;
}

PageRequest PageRequest::onChannel(PageChannel channel) const {
  PageRequest out{raw};
  std::memset(out.raw.data() + kChannelByte, 0, 4);
  out.raw[kChannelByte] = static_cast<char>(channel);
  return out;
}

PageRequest relayGaveUpNotice() {
  std::string raw(kPageRequestBytes, '\0');
  std::memcpy(raw.data(), &kCmdRelayGaveUp, sizeof kCmdRelayGaveUp);
  return PageRequest{raw};
}

std::string pageFrameHeader(PageChannel channel, size_t length) {
  std::string header(kPageFrameHeaderBytes, '\0');
  header[0] = static_cast<char>(channel);
  uint32_t n = static_cast<uint32_t>(length);
  std::memcpy(header.data() + 1, &n, sizeof n);
  return header;
}

void PageFrameSplitter::feed(const char* data, size_t size,
                             const std::function<void(PageChannel, const char*, size_t)>& sink) {
  while (size > 0) {
    if (left_ == 0) {
      size_t take = std::min(size, kPageFrameHeaderBytes - header_.size());
      header_.append(data, take);
      data += take;
      size -= take;
      if (header_.size() < kPageFrameHeaderBytes) return;
      uint8_t channel = static_cast<uint8_t>(header_[0]);
      uint32_t length;
      std::memcpy(&length, header_.data() + 1, sizeof length);
      header_.clear();
      if (channel > static_cast<uint8_t>(PageChannel::Bulk) || length == 0 || length > kMaxPageFrameBytes) {
        fail(ErrorKind::InvalidInput, "page frame of channel " + std::to_string(channel) + " with " +
                                          std::to_string(length) + " bytes");
      }
      channel_ = static_cast<PageChannel>(channel);
      left_ = length;
      continue;
    }
    size_t take = std::min(size, left_);
    sink(channel_, data, take);
    left_ -= take;
    data += take;
    size -= take;
  }
}

PageRequest PageRequest::at(uint64_t vaddr, uint64_t pages) const {
  PageRequest out = withPages(pages);
  std::memcpy(out.raw.data() + 16, &vaddr, sizeof vaddr);
  return out;
}

std::string pageAnswerHeader(const std::string& command, uint64_t pages, uint64_t vaddr, uint64_t dstId) {
  std::string raw(kPageRequestBytes, '\0');
  std::memcpy(raw.data(), command.data(), std::min<size_t>(4, command.size()));
  std::memcpy(raw.data() + 8, &pages, sizeof pages);
  std::memcpy(raw.data() + 16, &vaddr, sizeof vaddr);
  std::memcpy(raw.data() + 24, &dstId, sizeof dstId);
  return raw;
}

std::vector<PageRequest> PageRequestSplitter::feed(const char* data, size_t size) {
  partial_.append(data, size);
  std::vector<PageRequest> out;
  size_t at = 0;
  for (; partial_.size() - at >= kPageRequestBytes; at += kPageRequestBytes) {
    PageRequest r{partial_.substr(at, kPageRequestBytes)};
    if (r.command() == PageCommand::Other) {
      fail(ErrorKind::InvalidInput, "page request with command " + std::to_string(commandBits(r.raw)) +
                                        ": lazy-pages sends only GET and CLOSE");
    }
    if (r.command() == PageCommand::Get && (r.pages() == 0 || r.pages() > kMaxPagesPerRequest)) {
      fail(ErrorKind::InvalidInput, "page request for " + std::to_string(r.pages()) + " pages");
    }
    out.push_back(std::move(r));
  }
  partial_.erase(0, at);
  return out;
}

void PageAnswerTracker::expect(PageRequest request, uint64_t tag) {
  Pending p;
  p.total = request.command() == PageCommand::Close ? kCloseAnswerBytes : 0;
  p.request = std::move(request);
  p.tag = tag;
  pending_.push_back(std::move(p));
}

void PageAnswerTracker::feed(const char* data, size_t size,
                             const std::function<void(const Pending&, const char*, size_t)>& sink) {
  while (size > 0) {
    if (pending_.empty()) fail(ErrorKind::InvalidInput, "page answer bytes with no request outstanding");
    Pending& p = pending_.front();
    size_t take;
    if (p.total == 0) {
      // A GET's header: its page count says how much follows.
      take = std::min(size, kPageRequestBytes - p.header.size());
      p.header.append(data, take);
      if (p.header.size() == kPageRequestBytes) {
        uint64_t pages = pageCount(p.header);
        if (pages == 0 || pages > p.request.pages()) {
          fail(ErrorKind::InvalidInput, "page answer with " + std::to_string(pages) + " pages to a request for " +
                                            std::to_string(p.request.pages()));
        }
        p.total = kPageRequestBytes + pages * kPageBytes;
      }
    } else {
      take = static_cast<size_t>(std::min<uint64_t>(size, p.total - p.received));
    }
    p.received += take;
    sink(p, data, take);
    data += take;
    size -= take;
    if (p.total != 0 && p.received == p.total) pending_.pop_front();
  }
}

}  // namespace migrate
