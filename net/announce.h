// Announces a moved address: gratuitous ARP from inside the container's netns
// so neighbours (the gateway, clients) and the segment's bridges learn the
// address's new location at once instead of after their caches time out.
#pragma once

#include <filesystem>
#include <string>

namespace migrate {

namespace fs = std::filesystem;

// Sends gratuitous ARP for `ipv4` out of `ifname` in `netns` (a request and a
// reply, each twice: some stacks honour only one form). Uses a raw AF_PACKET
// socket; needs the interface up with its MAC set. Neighbours update entries
// they already have; Linux creates none from it unless arp_accept is on.
void announceAddress(const fs::path& netns, const std::string& ifname, const std::string& ipv4);

}  // namespace migrate
