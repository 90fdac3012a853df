#!/usr/bin/env bash
# Installs the system packages the project's tests need (Debian 12). Idempotent.
# Usage: hack/install-deps.sh [all|ceph]   (as root, or with sudo available)
#   all (default)  everything below
#   ceph           only Ceph (daemons for hack/ceph-up.sh, C libraries for
#                  the `ceph` build tag)
set -euo pipefail

# pkg/blockdev/fuseloop: FUSE, loop devices (losetup/blkdiscard/blockdev), filesystems, fio.
BASE_PACKAGES=(
  fuse3
  util-linux
  e2fsprogs
  xfsprogs
  fio
)

# Ceph 16 (Pacific): a single-node cluster (hack/ceph-up.sh), rbd-mirror (the
# two-site DR drill, hack/dr-up.sh) and the C/C++
# libraries behind pkg/objstore/ceph and pkg/librbd (go-ceph, build tags
# `ceph pacific`; libradospp-dev carries librados.hpp).
CEPH_PACKAGES=(
  ceph-mon
  ceph-osd
  ceph-common
  rbd-mirror
  librados-dev
  libradospp-dev
  librbd-dev
  g++
)

case "${1:-all}" in
  all) PACKAGES=("${BASE_PACKAGES[@]}" "${CEPH_PACKAGES[@]}") ;;
  ceph) PACKAGES=("${CEPH_PACKAGES[@]}") ;;
  *) echo "usage: $0 [all|ceph]" >&2; exit 2 ;;
esac

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-deps: all packages present"
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -o DPkg::Lock::Timeout=900
$SUDO apt-get install -y --no-install-recommends -o DPkg::Lock::Timeout=900 "${missing[@]}"
