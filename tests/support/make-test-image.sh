#!/bin/bash
# Builds a tiny rootfs tarball for tests: busybox-static with applet symlinks,
# the given static programs in /usr/local/bin, the usual empty directories and
# a minimal /etc/passwd and /etc/group.
#
#   make-test-image.sh OUT_TARBALL [STATIC_PROGRAM...]
#
# Deterministic (sorted names, fixed mtime, numeric root ownership, fixed
# modes, GNU format without pax time headers), so the same inputs always give
# the same bytes and therefore the same image digest.
set -euo pipefail

if [[ $# -lt 1 ]]; then
  echo "usage: $0 OUT_TARBALL [STATIC_PROGRAM...]" >&2
  exit 2
fi
out=$1
shift

busybox=${BUSYBOX:-/bin/busybox}
if [[ ! -x $busybox ]]; then
  echo "make-test-image: $busybox not found (apt-get install busybox-static)" >&2
  exit 1
fi
if ldd "$busybox" >/dev/null 2>&1; then
  echo "make-test-image: $busybox is dynamically linked; need busybox-static" >&2
  exit 1
fi

umask 022
stage=$(mktemp -d "${TMPDIR:-/tmp}/make-test-image.XXXXXX")
trap 'rm -rf "$stage"' EXIT

chmod 0755 "$stage"
mkdir -p "$stage"/{bin,etc,tmp,proc,sys,dev,run,var/tmp,root,usr/local/bin}
chmod 1777 "$stage/tmp" "$stage/var/tmp"
chmod 0700 "$stage/root"
install -m 0755 "$busybox" "$stage/bin/busybox"

available=$("$busybox" --list)
for applet in sh sleep echo cat ls mkdir rm nc ip ping cp wc head tail grep sed dd hostname env id; do
  if grep -qx "$applet" <<<"$available"; then
    ln -s busybox "$stage/bin/$applet"
  else
    echo "make-test-image: busybox lacks \`$applet\`, skipped" >&2
  fi
done

for program in "$@"; do
  if [[ ! -f $program ]]; then
    echo "make-test-image: \`$program\` not found" >&2
    exit 1
  fi
  if ldd "$program" >/dev/null 2>&1; then
    echo "make-test-image: \`$program\` is dynamically linked; the image has no libc" >&2
    exit 1
  fi
  install -m 0755 "$program" "$stage/usr/local/bin/$(basename "$program")"
done

cat >"$stage/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PASSWD
cat >"$stage/etc/group" <<'GROUP'
root:x:0:
nobody:x:65534:
GROUP
chmod 0644 "$stage/etc/passwd" "$stage/etc/group"

tar --create --file="$out" --directory="$stage" \
  --sort=name --format=gnu --mtime='2024-01-01 00:00:00Z' \
  --owner=0 --group=0 --numeric-owner \
  .
