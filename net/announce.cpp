#include "net/announce.h"

#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include <array>
#include <cstring>

#include "common/error.h"
#include "common/fd.h"
#include "common/syscall.h"
#include "net/netns.h"

namespace migrate {

namespace {

// Ethernet header + ARP for IPv4 over Ethernet (RFC 826), packed on the wire.
struct __attribute__((packed)) ArpFrame {
  uint8_t destination[6];
  uint8_t source[6];
  uint16_t etherType;
  uint16_t hardwareType;
  uint16_t protocolType;
  uint8_t hardwareLength;
  uint8_t protocolLength;
  uint16_t operation;
  uint8_t senderMac[6];
  uint8_t senderIp[4];
  uint8_t targetMac[6];
  uint8_t targetIp[4];
};

ArpFrame gratuitousArp(const uint8_t (&mac)[6], const in_addr& ip, uint16_t operation) {
  ArpFrame f{};
  std::memset(f.destination, 0xff, sizeof f.destination);
  std::memcpy(f.source, mac, 6);
  f.etherType = htons(ETH_P_ARP);
  f.hardwareType = htons(ARPHRD_ETHER);
  f.protocolType = htons(ETH_P_IP);
  f.hardwareLength = 6;
  f.protocolLength = 4;
  f.operation = htons(operation);
  std::memcpy(f.senderMac, mac, 6);
  std::memcpy(f.senderIp, &ip, 4);
  // Sender and target IP are the same: that is what makes it gratuitous. The
  // target MAC is zero in the request form, ours in the reply form.
  if (operation == ARPOP_REPLY) std::memcpy(f.targetMac, mac, 6);
  std::memcpy(f.targetIp, &ip, 4);
  return f;
}

}  // namespace

void announceAddress(const fs::path& netns, const std::string& ifname, const std::string& ipv4) {
  ErrorContext context("announce: " + ipv4 + " on " + ifname + " in `" + netns.string() + "`");
  in_addr ip{};
  if (::inet_pton(AF_INET, ipv4.c_str(), &ip) != 1) fail(ErrorKind::InvalidInput, "not an IPv4 address");
  if (ifname.empty() || ifname.size() >= IFNAMSIZ) fail(ErrorKind::InvalidInput, "bad interface name");
  runInNetns(netns, [&]() {
    ErrorContext inner("announce: " + ipv4 + " on " + ifname);
    // The socket belongs to the netns of the thread that creates it.
    Fd sock(SYSCALL(::socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ETH_P_ARP)), "socket(AF_PACKET)"));
    ifreq req{};
    std::strncpy(req.ifr_name, ifname.c_str(), IFNAMSIZ - 1);
    SYSCALL(::ioctl(sock.get(), SIOCGIFINDEX, &req), "ioctl(SIOCGIFINDEX)");
    int index = req.ifr_ifindex;
    SYSCALL(::ioctl(sock.get(), SIOCGIFHWADDR, &req), "ioctl(SIOCGIFHWADDR)");
    if (req.ifr_hwaddr.sa_family != ARPHRD_ETHER) fail("the interface is not Ethernet");
    uint8_t mac[6];
    std::memcpy(mac, req.ifr_hwaddr.sa_data, 6);

    sockaddr_ll to{};
    to.sll_family = AF_PACKET;
    to.sll_protocol = htons(ETH_P_ARP);
    to.sll_ifindex = index;
    to.sll_halen = 6;
    std::memset(to.sll_addr, 0xff, 6);
    std::array frames = {gratuitousArp(mac, ip, ARPOP_REQUEST), gratuitousArp(mac, ip, ARPOP_REPLY)};
    // Twice: a single frame lost on a busy segment would leave caches stale.
    for (int round = 0; round < 2; ++round) {
      for (auto& frame : frames) {
        SYSCALL(::sendto(sock.get(), &frame, sizeof frame, 0, reinterpret_cast<sockaddr*>(&to), sizeof to), "sendto");
      }
    }
  });
}

}  // namespace migrate
