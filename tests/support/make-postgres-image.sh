#!/bin/bash
# Builds a rootfs tarball with the host's Debian PostgreSQL server for tests:
# busybox-static with applet symlinks (sh, su, ...), the PostgreSQL binaries,
# server modules and share dir, every shared library they need (found with
# ldd on this host) and the dynamic loader, the C.UTF-8 locale, the timezone
# database, a `postgres` user (uid/gid 999, home /var/lib/postgresql) and the
# entry point /usr/local/bin/pg-start (tests/support/pg-start).
#
#   make-postgres-image.sh OUT_TARBALL
#
# Environment: PG_VERSION (15), BUSYBOX (/bin/busybox).
#
# Like make-test-image.sh, deterministic (sorted names, fixed mtime,
# numeric root ownership, fixed modes, GNU format without pax time headers):
# the same host packages always give the same bytes and the same digest.
# Left out to keep it small: llvmjit.so (it pulls in libLLVM and libz3,
# 130 MiB; the server runs without JIT when the module is missing), the
# bitcode and pgxs dirs, man pages, docs and every locale but C.UTF-8.
set -euo pipefail

if [[ $# -ne 1 ]]; then
  echo "usage: $0 OUT_TARBALL" >&2
  exit 2
fi
out=$1
here=$(cd "$(dirname "$0")" && pwd)

version=${PG_VERSION:-15}
pglib=/usr/lib/postgresql/$version
pgshare=/usr/share/postgresql/$version
busybox=${BUSYBOX:-/bin/busybox}

fail() { echo "make-postgres-image: $*" >&2; exit 1; }

[[ -x $busybox ]] || fail "$busybox not found (apt-get install busybox-static)"
! ldd "$busybox" >/dev/null 2>&1 || fail "$busybox is dynamically linked; need busybox-static"
[[ -x $pglib/bin/postgres && -d $pgshare ]] ||
  fail "PostgreSQL $version not found in $pglib (apt-get install postgresql-$version postgresql-client-$version)"
[[ -f $here/pg-start ]] || fail "$here/pg-start not found"

umask 022
stage=$(mktemp -d "${TMPDIR:-/tmp}/make-postgres-image.XXXXXX")
trap 'rm -rf "$stage"' EXIT

chmod 0755 "$stage"
mkdir -p "$stage"/{bin,etc,tmp,proc,sys,dev,run,var/tmp,var/lib/postgresql,root,usr/local/bin}
mkdir -p "$stage$pglib"/{bin,lib} "$stage$pgshare"
chmod 1777 "$stage/tmp" "$stage/var/tmp"
chmod 0700 "$stage/root"
# Debian's build looks for the socket in /var/run/postgresql.
ln -s ../run "$stage/var/run"
# The host's usr-merge links (/lib -> usr/lib, /lib64 -> usr/lib64), so the
# paths ldd reports (and the loader path in every binary) resolve as here.
for d in /lib /lib32 /lib64 /libx32; do
  if [[ -L $d ]]; then
    ln -s "$(readlink "$d")" "$stage$d"
  fi
done

install -m 0755 "$busybox" "$stage/bin/busybox"
available=$("$busybox" --list)
for applet in sh su id whoami env cat ls mkdir rm rmdir mv cp ln chown chmod touch echo printf test \
              sleep grep sed awk head tail wc cut tr sort ps kill hostname ip nc ping df du free sync \
              date uname mktemp readlink realpath dirname basename tee true false xargs find stat; do
  if grep -qx "$applet" <<<"$available"; then
    ln -s busybox "$stage/bin/$applet"
  else
    echo "make-postgres-image: busybox lacks \`$applet\`, skipped" >&2
  fi
done

# Server and the clients a test may want inside the container.
elves=()
for program in postgres initdb pg_ctl pg_controldata psql pg_isready pgbench pg_dump createdb; do
  [[ -f $pglib/bin/$program ]] || fail "$pglib/bin/$program not found"
  install -m 0755 "$pglib/bin/$program" "$stage$pglib/bin/$program"
  elves+=("$pglib/bin/$program")
done
ln -s postgres "$stage$pglib/bin/postmaster"
# Server modules: plpgsql and dict_snowball are needed by initdb itself, the
# encoding conversions by clients that ask for another encoding, the rest are
# the contrib extensions (CREATE EXTENSION), a few KiB each.
for module in "$pglib"/lib/*.so; do
  case $(basename "$module") in llvmjit*) continue ;; esac
  install -m 0644 "$module" "$stage$pglib/lib/"
  elves+=("$module")
done
# The share dir (postgres.bki, extension SQL, timezone sets, ...), no man pages.
tar -C "$pgshare" --exclude=./man -cf - . | tar -C "$stage$pgshare" -xf -

# Every library ldd resolves for these, copied (dereferenced) to the path ldd
# names, plus the loader each binary names in PT_INTERP.
libs=$(for elf in "${elves[@]}"; do
         ldd "$elf" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'
       done | LC_ALL=C sort -u)
for lib in $libs; do
  dir=$(realpath "$(dirname "$lib")")
  mkdir -p "$stage$dir"
  install -m 0755 "$(realpath "$lib")" "$stage$dir/$(basename "$lib")"
done
if ldd "${elves[@]}" | grep 'not found'; then fail "a library is missing on this host"; fi

# C.UTF-8 (initdb --locale=C.UTF-8); glibc reads it from this directory.
if [[ -d /usr/lib/locale/C.utf8 ]]; then
  mkdir -p "$stage/usr/lib/locale"
  cp -R /usr/lib/locale/C.utf8 "$stage/usr/lib/locale/"
else
  fail "/usr/lib/locale/C.utf8 not found (libc-bin)"
fi
# Timezones (Debian builds PostgreSQL with the system tzdata): the zones,
# without the posix/ and right/ copies and the localtime link to the host.
mkdir -p "$stage/usr/share/zoneinfo"
tar -C /usr/share/zoneinfo --exclude=./posix --exclude=./right --exclude=./localtime -cf - . |
  tar -C "$stage/usr/share/zoneinfo" -xf -

install -m 0755 "$here/pg-start" "$stage/usr/local/bin/pg-start"
# initdb runs `locale -a` to fill pg_collation; the image has no glibc
# `locale`, so a stand-in names the locales it does have.
cat >"$stage/bin/locale" <<'LOCALE'
#!/bin/sh
# Stand-in for glibc's `locale`: only -a, the locales this image has.
[ "${1:-}" = -a ] || { echo "locale: only -a is supported here" >&2; exit 1; }
printf 'C\nC.utf8\nPOSIX\n'
LOCALE
chmod 0755 "$stage/bin/locale"

cat >"$stage/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
postgres:x:999:999:PostgreSQL administrator:/var/lib/postgresql:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PASSWD
cat >"$stage/etc/group" <<'GROUP'
root:x:0:
postgres:x:999:
nogroup:x:65534:
GROUP
cat >"$stage/etc/nsswitch.conf" <<'NSS'
passwd: files
group: files
shadow: files
hosts: files dns
NSS
echo /bin/sh >"$stage/etc/shells"
ln -s /usr/share/zoneinfo/Etc/UTC "$stage/etc/localtime"

# Fixed modes whatever the host's umask and package modes were.
find "$stage/usr" "$stage/etc" -type d -exec chmod 0755 {} +
find "$stage/usr/share" "$stage/usr/lib/locale" "$stage/etc" -type f -exec chmod 0644 {} +

tar --create --file="$out" --directory="$stage" \
  --sort=name --format=gnu --mtime='2024-01-01 00:00:00Z' \
  --owner=0 --group=0 --numeric-owner \
  .
