#!/usr/bin/env bash
# Installs the system packages the project's tests need (Debian 12). Idempotent.
# Usage: hack/install-deps.sh   (as root, or with sudo available)
set -euo pipefail

# pkg/blockdev/fuseloop: FUSE, loop devices (losetup/blkdiscard/blockdev), filesystems, fio.
PACKAGES=(
  fuse3
  util-linux
  e2fsprogs
  xfsprogs
  fio
)

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
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends -o DPkg::Lock::Timeout=900 "${missing[@]}"
