#include "agent/image-transfer.h"

#include "common/error.h"
#include "common/log.h"
#include "net/data-listener.h"
#include "net/tls-stream.h"

namespace migrate {

namespace {

constexpr std::chrono::milliseconds kConnectTimeout{10000};
constexpr char kAck[] = "ok";
constexpr size_t kAckSize = sizeof kAck - 1;

}  // namespace

void receiveImage(ImageStore& images, DataListener& listener, const ImageTransferSpec& spec,
                  std::chrono::milliseconds timeout, const std::atomic<bool>& stop) {
  auto tls = listener.acceptTls(spec.pskIdentity, spec.psk, timeout, stop);
  TlsInputStream in(tls);
  auto info = images.importExported(in);
  if (!spec.image.empty() && info.digest != spec.image) {
    fail(ErrorKind::InvalidInput, "received image " + info.digest + ", expected " + spec.image);
  }
  tls.write(kAck, kAckSize);
  tls.shutdownWrite();
  logInfo("received image " + info.digest);
}

void sendImage(ImageStore& images, const ImageTransferSpec& spec, const std::string& targetAddress,
               uint16_t targetPort) {
  auto image = images.find(spec.image);
  Fd sock = connectTcp(targetAddress, targetPort, kConnectTimeout);
  auto tls = TlsStream::connect(std::move(sock), spec.pskIdentity, spec.psk);
  TlsOutputStream out(tls);
  images.exportImage(image.digest, out);
  out.finish();
  char ack[kAckSize];
  if (tls.readFully(ack, kAckSize) < kAckSize) {
    fail(ErrorKind::Failed, "target refused image " + image.digest + " (see its agent log)");
  }
}

}  // namespace migrate
