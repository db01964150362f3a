// An image going from one agent to another (a migration's target lacks the
// container's image): the same TLS channel and one-time key as a bundle, the
// image in the store's export format, and "ok" back once the receiver
// imported it and found the digest it was told to expect.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "agent/image-store.h"

namespace migrate {

class DataListener;

struct ImageTransferSpec {
  std::string image;        // sender: a reference or digest here; receiver: the digest it must get
  std::string pskIdentity;  // and the key both sides were given
  std::vector<uint8_t> psk;
};

// Receiver: the first connection that proves the key (strangers are
// dropped, as for a migration's receiver), within `timeout`; gives up soon
// after `stop`.
void receiveImage(ImageStore& images, DataListener& listener, const ImageTransferSpec& spec,
                  std::chrono::milliseconds timeout, const std::atomic<bool>& stop);

// Sender: connects to the receiver, streams the image, waits for its "ok".
void sendImage(ImageStore& images, const ImageTransferSpec& spec, const std::string& targetAddress,
               uint16_t targetPort);

}  // namespace migrate
