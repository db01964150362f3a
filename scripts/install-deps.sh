#!/usr/bin/env bash
# Makes a fresh Debian 12 machine ready to build, test and run the project.
# Idempotent: when everything is present it only checks, in a second or two.
set -euo pipefail

CRIU_VERSION=4.2.1
CRIU_MIN=40200          # CRIU's own version number: 4.2.0 and newer work on this kernel
PREFIX=/usr/local

log() { echo "install-deps: $*" >&2; }

if [ "$(id -u)" != 0 ]; then
  log "must run as root (apt-get, CRIU in $PREFIX)"; exit 1
fi

# Build and runtime packages, all from Debian 12.
PACKAGES=(
  build-essential cmake pkg-config git
  # control plane, data plane, storage formats
  cppzmq-dev libzmq3-dev capnproto libcapnp-dev libarchive-dev libzstd-dev zstd
  libssl-dev libselinux1-dev nlohmann-json3-dev catch2 libsqlite3-dev
  libcpp-httplib-dev libcli11-dev
  # the lab's CA and the coordinator's HTTPS certificate (cluster.sh), TLS tests
  openssl
  # container runtime parts
  runc conmon containernetworking-plugins busybox-static iproute2 nftables
  iputils-arping iputils-ping procps psmisc util-linux
  # benchmarks
  podman gnuplot-nox
  # CRIU's build dependencies
  libprotobuf-dev libprotobuf-c-dev protobuf-c-compiler protobuf-compiler
  python3-protobuf libnl-3-dev libnl-route-3-dev libcap-dev libnet1-dev libaio-dev
  libgnutls28-dev libnftables-dev libbsd-dev uuid-dev libdrm-dev xz-utils curl
)

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "ok installed"; }

updated=
missing=()
for p in "${PACKAGES[@]}"; do
  installed "$p" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  updated=1
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# PostgreSQL 15, whose files tests/support/make-postgres-image.sh packs into
# the postgres test image. Installed as packages, so that apt brings every
# library the image copies, but kept inert on this host: postgresql-15's
# postinst would create a cluster `main` (pg_createcluster) and start it
# (invoke-rc.d), a server on the host's port 5432. So postgresql-common goes
# first (it adds the `postgres` user and an init script, no cluster), then its
# /etc/postgresql-common/createcluster.conf says create_main_cluster = false,
# the setting that postinst reads (writing the file before postgresql-common
# is installed would clash with the copy its postinst installs with ucf), and
# for the whole install a policy-rc.d (unless the machine has its own) refuses
# every service start, as invoke-rc.d and deb-systemd-invoke honour it.
# Extracting the .debs instead would leave resolving libpq5, ICU, OpenSSL,
# LDAP and the rest of the dependencies to this script.
PG_VERSION=15
PG_PACKAGES=(postgresql-common "postgresql-$PG_VERSION" "postgresql-client-$PG_VERSION")
pg_missing=()
for p in "${PG_PACKAGES[@]}"; do
  installed "$p" || pg_missing+=("$p")
done
if [ ${#pg_missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  policy=/usr/sbin/policy-rc.d
  own_policy=
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# install-deps: no service starts while PostgreSQL is installed\nexit 101\n' >"$policy"
    chmod 0755 "$policy"
    own_policy=1
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  clusters_before=$(ls /etc/postgresql/$PG_VERSION 2>/dev/null || true)
  [ -n "$updated" ] || apt-get update -qq
  if ! installed postgresql-common; then
    log "installing postgresql-common"
    apt-get install -y -qq --no-install-recommends postgresql-common >/dev/null
  fi
  conf=/etc/postgresql-common/createcluster.conf
  if grep -Eq '^[#[:space:]]*create_main_cluster[[:space:]]*=' "$conf"; then
    sed -Ei 's/^[#[:space:]]*create_main_cluster[[:space:]]*=.*/create_main_cluster = false/' "$conf"
  else
    echo 'create_main_cluster = false' >>"$conf"
  fi
  log "installing postgresql-$PG_VERSION postgresql-client-$PG_VERSION (no cluster is created, no server started)"
  apt-get install -y -qq --no-install-recommends "postgresql-$PG_VERSION" "postgresql-client-$PG_VERSION" >/dev/null
  if [ -n "$own_policy" ]; then
    rm -f "$policy"
    trap - EXIT
  fi
  clusters_after=$(ls /etc/postgresql/$PG_VERSION 2>/dev/null || true)
  if [ "$clusters_before" != "$clusters_after" ]; then
    log "installing PostgreSQL created a cluster in /etc/postgresql/$PG_VERSION: $clusters_after"
    log "remove it with: pg_dropcluster --stop $PG_VERSION main"
    exit 1
  fi
fi

# CRIU: Debian 12's 3.17 fails on this kernel ([vvar_vclock]) and 4.1 fails on
# any TCP socket (SO_PASSCRED change in Linux 6.16), so build 4.2.1 from the
# upstream tarball of Debian's source package in sid. Its .debian.tar.xz is
# missing on the mirror, so we fetch only the orig tarball and build that.
#
# The agent decodes a bundle's CRIU images with CRIU's own schemas before CRIU
# reads them (agent/criu-image-check.h), so the images/*.proto of that same
# tarball are kept in $CRIU_PROTOS; CMake generates C++ from them.
CRIU_SHARE=$PREFIX/share/criu
CRIU_PROTOS=$CRIU_SHARE/images

criu_ok() {
  local v
  v=$(criu --version 2>/dev/null | awk '/^Version:/{print $2}') || return 1
  [ -n "$v" ] || return 1
  IFS=. read -r a b c <<<"$v"
  [ $((a * 10000 + b * 100 + ${c:-0})) -ge $CRIU_MIN ]
}

# The schemas are ready when they came from the tarball of this version.
protos_ok() {
  [ -f "$CRIU_PROTOS/core.proto" ] && [ -f "$CRIU_PROTOS/inventory.proto" ] &&
    [ "$(cat "$CRIU_SHARE/source-version" 2>/dev/null)" = "$CRIU_VERSION" ]
}

# Fetches CRIU's orig tarball (listed, with its SHA-256, in Debian sid's signed
# source index), checks it and unpacks it into a temporary dir; sets $src.
fetch_criu_source() {
  work=$(mktemp -d /tmp/migrate-deps.XXXXXX)
  trap 'rm -rf "$work"' EXIT
  # The mirror this machine already uses for Debian, read from apt's own config.
  local mirror
  mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  [ -n "$mirror" ] || mirror=$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list)
  mkdir -p "$work/etc" "$work/lists/partial"
  chmod 755 "$work"; chown -R _apt "$work/lists" 2>/dev/null || true
  cat >"$work/etc/sid.sources" <<SRC
Types: deb-src
URIs: $mirror
Suites: sid
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  local aptopts=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$work/etc"
                 -o "Dir::State::Lists=$work/lists")
  log "fetching CRIU $CRIU_VERSION source"
  apt-get "${aptopts[@]}" update -qq
  local line url sum
  line=$(apt-get "${aptopts[@]}" source --print-uris criu 2>/dev/null | grep "criu_${CRIU_VERSION}.orig.tar" | head -1)
  [ -n "$line" ] || { log "criu ${CRIU_VERSION} orig tarball not listed in sid sources"; exit 1; }
  url=$(echo "$line" | awk '{print $1}' | tr -d "'")
  sum=$(echo "$line" | awk '{print $4}' | sed 's/^SHA256://')
  curl -fsSL -o "$work/criu.tar.xz" "$url"
  echo "$sum  $work/criu.tar.xz" | sha256sum -c --quiet
  tar -C "$work" -xf "$work/criu.tar.xz"
  src=$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'criu-[0-9]*' | head -1)
  [ -n "$src" ] && [ -f "$src/images/core.proto" ] || { log "unexpected layout of the CRIU tarball"; exit 1; }
}

install_criu_protos() {
  install -d -m 0755 "$CRIU_PROTOS"
  install -m 0644 "$src"/images/*.proto "$CRIU_PROTOS/"
  echo "$CRIU_VERSION" >"$CRIU_SHARE/source-version"
  log "installed CRIU $CRIU_VERSION image schemas in $CRIU_PROTOS"
}

if criu_ok; then
  log "criu $(criu --version | awk '/^Version:/{print $2}') present"
  if ! protos_ok; then
    fetch_criu_source
    install_criu_protos
  fi
else
  fetch_criu_source
  log "building CRIU (about 30 s)"
  make -C "$src" -j"$(nproc)" criu >"$work/build.log" 2>&1 || { tail -30 "$work/build.log"; exit 1; }
  install -m 0755 "$src/criu/criu" "$PREFIX/sbin/criu"
  criu_ok || { log "built criu does not report version >= 4.2"; exit 1; }
  log "installed $(criu --version | head -1) in $PREFIX/sbin"
  install_criu_protos
fi

# cgroup v1 hybrid: runc needs the controllers mounted; they are on this machine.
# Nothing to start: agents and coordinator are started by the lab and tests.
log "ready"
