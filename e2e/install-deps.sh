#!/usr/bin/env bash
# Debian packages the e2e needs on the host: etcd (etcd-server, etcd-client), containerd,
# runc, openssl, iptables (the kubelet's chains). Idempotent.
set -euo pipefail
PACKAGES=(etcd-server etcd-client containerd runc openssl iptables util-linux)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "e2e/install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -o DPkg::Lock::Timeout=900 >/dev/null
apt-get install -y --no-install-recommends -o DPkg::Lock::Timeout=900 "${missing[@]}" >/dev/null
# Debian's containerd package enables a service; this e2e starts its own containerd.
