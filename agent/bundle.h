// The migration bundle: what a checkpointed container becomes on the wire and
// on disk (`checkpoint --export`). DESIGN.md "Formats".
//
// A bundle is one tar stream (pax), zstd-compressed by the caller. Entries, in
// this order (the reader enforces it):
//   manifest.json   BundleManifest; first, so a target can refuse early
//   config.dump     the container's config
//   spec.dump       its OCI spec
//   network.status  CNI results (optional)
//   checkpoint/     CRIU images; must hold inventory.img
//   rootfs-diff/    the overlay upper dir's entries (optional)
//   deleted.files   JSON array of rootfs-diff-relative paths deleted in the upper (optional)
//   ctr.log         the container's log, its last kMaxCtrLogBytes (optional)
//   stats-dump      CRIU's dump statistics (optional)
//   signature.json  the source agent's Ed25519 signature over the SHA-256 of
//                   every tar byte before it (agent/bundle-signature.h);
//                   last, once. A bundle without it is "unsigned".
//
// Why `rootfs-diff/` and not podman's nested `rootfs-diff.tar`: a tar entry
// needs its size in its header, so a nested tar would have to be staged in a
// file first, against our "no intermediate archive" rule. The upper dir's
// entries go directly under `rootfs-diff/` in the one stream instead. Overlay
// whiteouts (0/0 character devices in the upper dir) are not sent as device
// nodes, which the reader refuses everywhere, but listed in `deleted.files`
// (as podman does) after the rootfs-diff entries; the reader re-creates them.
// Opaque directories keep their `trusted.overlay.opaque=y` xattr in the pax
// header.
//
// Change the layout -> bump kBundleFormatVersion (rr's trace version).
// Version 2 added signature.json; a version 1 bundle is refused (it could
// only ever be restored as unsigned).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "agent/id-mapping.h"

namespace migrate {

// 3: rootfs-diff/ of a container in a user namespace carries its own ids,
// and the manifest its idMapping; a reader of 2 would land them as host ids.
constexpr int kBundleFormatVersion = 3;

namespace bundle {
constexpr std::string_view kManifest = "manifest.json";
constexpr std::string_view kConfigDump = "config.dump";
constexpr std::string_view kSpecDump = "spec.dump";
constexpr std::string_view kNetworkStatus = "network.status";
constexpr std::string_view kCheckpointDir = "checkpoint";
constexpr std::string_view kRootfsDiffDir = "rootfs-diff";
constexpr std::string_view kDeletedFiles = "deleted.files";
constexpr std::string_view kCtrLog = "ctr.log";
constexpr std::string_view kStatsDump = "stats-dump";
constexpr std::string_view kSignature = "signature.json";
// CRIU writes it last in a successful dump; no inventory, no restore.
constexpr std::string_view kInventory = "inventory.img";
// Caps on the files outside the two trees, whose sizes the manifest does
// not declare: ctr.log travels as its last kMaxCtrLogBytes (the writer cuts
// it), the others are small JSON or text.
constexpr uint64_t kMaxCtrLogBytes = 64ull << 20;
constexpr uint64_t kMaxSideFileBytes = 1ull << 20;
}  // namespace bundle

struct BundleManifest {
  int formatVersion = kBundleFormatVersion;
  std::string containerName;
  std::string containerId;
  std::string imageDigest;
  std::string imageName;
  std::string sourceHost;
  std::string criuVersion;
  std::string runtimeVersion;
  std::string createdAt;  // RFC 3339, UTC
  // Bytes of regular-file data under checkpoint/ and rootfs-diff/. Filled in
  // by writeBundle; readBundle checks them, which catches a tar stream cut
  // exactly at an entry boundary (tar itself cannot tell), and refuses the
  // first entry that would take a tree past its figure. A target prechecks
  // them against its free memory (the checkpoint tmpfs) and disk.
  uint64_t checkpointBytes = 0;
  uint64_t rootfsDiffBytes = 0;
  // Tar entries under checkpoint/ and rootfs-diff/, each tree's own
  // directory entry included; rootfsDiffEntries also counts the whiteouts
  // listed in deleted.files (each becomes an inode too). Filled in by
  // writeBundle; readBundle refuses the first entry past either figure and
  // bounds the checkpoint tmpfs's inodes by checkpointEntries. Added in
  // format 1 without a version bump: a manifest without them is refused
  // ("missing field"), so an old writer's bundle cannot skip the bound.
  uint64_t checkpointEntries = 0;
  uint64_t rootfsDiffEntries = 0;
  bool tcpEstablished = false;  // checkpointed with --tcp-established
  // The container's user namespace (agent/id-mapping.h), as in its
  // config.dump; none: the host's. With one, rootfs-diff/ carries container
  // ids (0 = its root): the writer subtracts hostId, the reader adds the
  // target's, and refuses an id past `size`.
  std::optional<IdMapping> idMapping;

  nlohmann::json toJson() const;
  // Throws Error(InvalidInput) naming the missing or ill-typed field.
  static BundleManifest fromJson(const nlohmann::json& json);
};

}  // namespace migrate
