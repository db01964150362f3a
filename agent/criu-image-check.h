// Checks a checkpoint's CRIU images against the OCI spec this host generated
// for the restore, before CRIU reads them (DESIGN.md "Security and trust
// boundaries"): the images come from another host, and CRIU restores what
// they say as root. Decoded with CRIU's own schemas (agent/criu-images.h).
//
// What must hold, each against the spec (process.user, process.capabilities,
// noNewPrivileges, linux.seccomp, linux.namespaces, mounts, maskedPaths,
// readonlyPaths, linux.devices):
// - names: every file in the images dir is one CRIU writes for a runc
//   container (plus runc's descriptors.json); anything else is refused.
// - credentials of every task (core-*.img): uids/gids the spec's user (other
//   ids only where the spec lets the task change them: CAP_SETUID/CAP_SETGID
//   it can hold), each capability set (inheritable, permitted, effective,
//   bounding, ambient) within the spec's, securebits only with CAP_SETPCAP,
//   no_new_privs kept, seccomp not off where the spec sets a filter, no LSM
//   label the spec does not name.
// - namespaces (inventory.img root ids, ids-*.img): a task is in a namespace
//   of its own for exactly the kinds the spec creates, one per kind.
// - mounts (mountpoints-*.img): one tree, no mountpoint twice; fstypes and
//   sources only those the spec mounts; external (bind) mounts only the
//   spec's bind destinations and runc's /dev/null for masked files; the
//   spec's ro/nosuid/nodev/noexec kept; every masked and read-only path that
//   exists on this host is covered by a mount.
// - device nodes: in the tmpfs tarballs (tmpfs-dev-*.tar.gz.img,
//   tmpfs-*.tar.gz.img), ghost files and the device cgroup (cgroup.img), only
//   the OCI default set (null, zero, full, random, urandom, tty, console,
//   ptmx, pts) and the spec's linux.devices; no block device; open files
//   (files.img) no block device and no namespace, tun or plugin file.
// pages-*.img are not read (a 1 GiB checkpoint is checked in milliseconds).
#pragma once

#include <filesystem>
#include <optional>

#include <nlohmann/json.hpp>

namespace migrate {

namespace fs = std::filesystem;

// Throws Error(InvalidInput, "criu image `core-1.img`: task 1 CapEff 0x... exceeds
// the spec's effective set 0x... (CAP_SYS_ADMIN, ...)") for the first thing
// that does not hold; each refusal names the file, the task or mount, and the field.
// `rootfs`: the container's merged rootfs, mounted, where open files' paths
// are walked for symlinks (see checkRegFile).
void checkCriuImages(const fs::path& imagesDir, const nlohmann::json& spec,
                     std::optional<fs::path> rootfs = std::nullopt);

}  // namespace migrate
