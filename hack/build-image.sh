#!/usr/bin/env bash
# Assembles the csi-rbdj container image as an OCI archive without a container
# engine: the same content as the Dockerfile's runtime stage (Debian 12 packages:
# the Ceph client libraries, e2fsprogs, xfsprogs, util-linux, mount, fuse3, a shell),
# taken from Debian's packages (apt-get download + extraction into a merged-/usr
# rootfs, no maintainer scripts), plus the built binary at /usr/local/bin/csi-rbdj.
#
# Usage: hack/build-image.sh BINARY IMAGE_NAME OUT.tar
#   e.g. hack/build-image.sh bin/csi-rbdj localhost/csi-rbdj:dev /tmp/csi-rbdj.tar
# Import: ctr -n k8s.io images import OUT.tar
#
# Two layers: the Debian rootfs, then the binary alone. The rootfs layer depends only on
# the package versions: it is built once and cached (with the .debs) in
# $CSI_RBDJ_CACHE/image (default ~/.cache/csi-rbdj/image), so a new binary costs only its
# own layer (seconds: `make e2e` builds two images per run). The archive is byte-identical
# for the same binary and the same package versions, and is not rewritten when it is
# already up to date.
set -euo pipefail

if [ $# -ne 3 ]; then
  echo "usage: $0 BINARY IMAGE_NAME OUT.tar" >&2
  exit 2
fi
BIN=$1 NAME=$2 OUT=$3
[ -f "$BIN" ] || { echo "build-image: no binary $BIN" >&2; exit 1; }

# The Dockerfile's runtime packages, plus what makes a usable rootfs without
# maintainer scripts (a shell and coreutils for debugging and for the e2e pods).
PACKAGES=(
  base-files bash coreutils dash
  util-linux mount e2fsprogs xfsprogs fuse3
  librados2 librbd1
  ca-certificates
)

CACHE=${CSI_RBDJ_CACHE:-$HOME/.cache/csi-rbdj}/image
DEBS=$CACHE/debs
mkdir -p "$DEBS"
W=$(mktemp -d "${TMPDIR:-/tmp}/csi-rbdj-image.XXXXXX")
trap 'rm -rf "$W"' EXIT
log() { echo "build-image: $*" >&2; }

# 1. The dependency closure as apt resolves it on an empty system (no recommends).
: > "$W/status"
resolve() {
  apt-get -s -o Dir::State::status="$W/status" -o Debug::NoLocking=1 \
    install --no-install-recommends "${PACKAGES[@]}" 2>/dev/null |
    awk '/^Inst /{v=$3; gsub(/[()\[\]]/, "", v); print $2 "=" v}'
}
resolve > "$W/pkgs"
if [ ! -s "$W/pkgs" ]; then
  log "apt-get could not resolve ${PACKAGES[*]}: running apt-get update"
  apt-get update -o DPkg::Lock::Timeout=900 >/dev/null
  resolve > "$W/pkgs"
fi
[ -s "$W/pkgs" ] || { log "cannot resolve the package set"; exit 1; }

# 2. Download what is not cached yet (file names carry name and version).
missing=()
while IFS= read -r pv; do
  p=${pv%%=*} v=${pv#*=}
  # apt's file names escape ':' in versions as %3a
  compgen -G "$DEBS/${p}_${v//:/%3a}_*.deb" >/dev/null || missing+=("$pv")
done < "$W/pkgs"
if [ ${#missing[@]} -gt 0 ]; then
  log "downloading ${#missing[@]} packages"
  (cd "$DEBS" && apt-get download -o Debug::NoLocking=1 -o APT::Sandbox::User=root "${missing[@]}" >/dev/null)
fi

# The OCI blob store of the archive.
B=$W/oci/blobs/sha256
mkdir -p "$B"
blob() { # file -> "digest size"; moves the file into the blob store
  local d s
  d=$(sha256sum "$1" | cut -d' ' -f1) s=$(stat -c %s "$1")
  mv "$1" "$B/$d"
  echo "$d $s"
}
# layer DIR OUT: DIR as a reproducible tar layer OUT.tar.gz, with its uncompressed digest
# (the config's diff_id) in OUT.diffid (written last: a complete pair or none).
layer() {
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 --format=posix \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    -C "$1" -cf "$W/layer.tar" .
  sha256sum "$W/layer.tar" | cut -d' ' -f1 > "$W/layer.diffid"
  gzip -n -6 -c "$W/layer.tar" > "$2.tar.gz.tmp"
  rm -f "$W/layer.tar"
  mv "$2.tar.gz.tmp" "$2.tar.gz" && mv "$W/layer.diffid" "$2.diffid"
}

# 3. The rootfs layer, cached under the package set (and this recipe's version: bump it
# when the rootfs steps below change).
RECIPE=1
BASE=base-$( (echo "recipe $RECIPE"; cat "$W/pkgs") | sha256sum | cut -c1-16)
if [ -s "$CACHE/$BASE.tar.gz" ] && [ -s "$CACHE/$BASE.diffid" ]; then
  log "rootfs layer $BASE cached"
else
# merged /usr as Debian 12 installs it, every package extracted
R=$W/rootfs
mkdir -p "$R/usr/bin" "$R/usr/sbin" "$R/usr/lib" "$R/usr/lib64" "$R/usr/local/bin" \
  "$R/etc" "$R/tmp" "$R/var/lib/csi-rbdj" "$R/run" "$R/root"
for d in bin sbin lib lib64; do ln -s "usr/$d" "$R/$d"; done
chmod 1777 "$R/tmp"
while IFS= read -r pv; do
  p=${pv%%=*} v=${pv#*=}
  deb=$(compgen -G "$DEBS/${p}_${v//:/%3a}_*.deb" | head -n1)
  dpkg-deb --fsys-tarfile "$deb" | tar -C "$R" -x --keep-directory-symlink
done < "$W/pkgs"
# What maintainer scripts would have done and the binary needs.
[ -e "$R/usr/bin/sh" ] || ln -s dash "$R/usr/bin/sh"
printf 'root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n' > "$R/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$R/etc/group"
printf 'hosts: files dns\n' > "$R/etc/nsswitch.conf"
[ -e "$R/etc/mtab" ] || ln -s ../proc/self/mounts "$R/etc/mtab"
if [ -x "$R/usr/sbin/update-ca-certificates" ] && [ -d "$R/usr/share/ca-certificates" ]; then
  (cd "$R/usr/share/ca-certificates" && find . -name '*.crt' | sort | sed 's|^\./||') > "$R/etc/ca-certificates.conf"
  mkdir -p "$R/etc/ssl/certs"
  (cd "$R/usr/share/ca-certificates" && find . -name '*.crt' | sort | xargs cat) > "$R/etc/ssl/certs/ca-certificates.crt"
fi
mkdir -p "$R/usr/share/csi-rbdj"
cp "$W/pkgs" "$R/usr/share/csi-rbdj/packages.txt" # name=version of every package in the image
ldconfig -r "$R"
rm -f "$R/var/cache/ldconfig/aux-cache" # holds inode numbers and ctimes: not reproducible
# Drop what a runtime image does not need (documentation, locales, caches).
rm -rf "$R/usr/share/doc" "$R/usr/share/man" "$R/usr/share/info" "$R/usr/share/locale" \
  "$R/usr/share/lintian" "$R/var/cache/debconf"/*-old
layer "$R" "$CACHE/$BASE"
rm -rf "$R"
find "$CACHE" -maxdepth 1 -name 'base-*' ! -name "$BASE.*" -delete # older package sets
log "rootfs layer $BASE built"
fi

# 4. The binary's layer, then the OCI layout: a config, a manifest, an index naming the image.
mkdir -p "$W/bin/usr/local/bin"
chmod 0755 "$W/bin" "$W/bin/usr" "$W/bin/usr/local" "$W/bin/usr/local/bin"
install -m 0755 "$BIN" "$W/bin/usr/local/bin/csi-rbdj"
layer "$W/bin" "$W/binary"
DIFF0=$(cat "$CACHE/$BASE.diffid") DIFF1=$(cat "$W/binary.diffid")
cp "$CACHE/$BASE.tar.gz" "$W/base.tar.gz"
read -r L0DIG L0SZ < <(blob "$W/base.tar.gz")
read -r L1DIG L1SZ < <(blob "$W/binary.tar.gz")
printf '{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/usr/local/bin/csi-rbdj"],"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"WorkingDir":"/","Labels":{"org.opencontainers.image.title":"csi-rbdj","org.opencontainers.image.base.name":"debian:12"}},"rootfs":{"type":"layers","diff_ids":["sha256:%s","sha256:%s"]},"history":[{"created_by":"hack/build-image.sh: Debian packages"},{"created_by":"hack/build-image.sh: csi-rbdj"}]}' \
  "$DIFF0" "$DIFF1" > "$W/config.json"
read -r CDIG CSZ < <(blob "$W/config.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s},{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
  "$CDIG" "$CSZ" "$L0DIG" "$L0SZ" "$L1DIG" "$L1SZ" > "$W/manifest.json"
read -r MDIG MSZ < <(blob "$W/manifest.json")
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
  "$MDIG" "$MSZ" "$NAME" "${NAME##*:}" > "$W/oci/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' > "$W/oci/oci-layout"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$W/oci" -cf "$W/image.tar" oci-layout index.json blobs
if [ -f "$OUT" ] && cmp -s "$W/image.tar" "$OUT"; then
  log "$OUT is up to date ($NAME, manifest sha256:$MDIG)"
else
  mkdir -p "$(dirname "$OUT")"
  mv "$W/image.tar" "$OUT"
  log "built $OUT ($NAME, manifest sha256:$MDIG, $(wc -l < "$W/pkgs") Debian packages: layer $((L0SZ / 1048576)) MiB; binary layer $((L1SZ / 1048576)) MiB)"
fi
