#!/usr/bin/env bash
# mkimage.sh BINARY IMAGE_NAME OUT.tar ENTRYPOINT_PATH
# A single-layer OCI image archive from one static binary (the e2e's pause and
# csi-provisioner images), importable with `ctr -n k8s.io images import`.
# Reproducible: the same binary gives the same archive (not rewritten then).
set -euo pipefail
if [ $# -ne 4 ]; then
  echo "usage: $0 BINARY IMAGE_NAME OUT.tar ENTRYPOINT_PATH" >&2
  exit 2
fi
BIN=$1 NAME=$2 OUT=$3 EP=$4
W=$(mktemp -d "${TMPDIR:-/tmp}/mkimage.XXXXXX")
trap 'rm -rf "$W"' EXIT
mkdir -p "$W/rootfs$(dirname "$EP")" "$W/rootfs/tmp" "$W/oci/blobs/sha256"
install -m 0755 "$BIN" "$W/rootfs$EP"
chmod 1777 "$W/rootfs/tmp"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$W/rootfs" -cf "$W/layer.tar" .
B=$W/oci/blobs/sha256
DIFF=$(sha256sum "$W/layer.tar" | cut -d' ' -f1)
gzip -n -c "$W/layer.tar" > "$W/layer.tar.gz"
blob() { # file -> "digest size", moved into the blob store
  local d s
  d=$(sha256sum "$1" | cut -d' ' -f1) s=$(stat -c %s "$1")
  mv "$1" "$B/$d"
  echo "$d $s"
}
read -r LDIG LSZ < <(blob "$W/layer.tar.gz")
printf '{"architecture":"amd64","os":"linux","config":{"Entrypoint":["%s"],"Env":["PATH=/usr/local/bin:/usr/bin:/bin"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' "$EP" "$DIFF" > "$W/config.json"
read -r CDIG CSZ < <(blob "$W/config.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' "$CDIG" "$CSZ" "$LDIG" "$LSZ" > "$W/manifest.json"
read -r MDIG MSZ < <(blob "$W/manifest.json")
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' "$MDIG" "$MSZ" "$NAME" "${NAME##*:}" > "$W/oci/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' > "$W/oci/oci-layout"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$W/oci" -cf "$W/image.tar" oci-layout index.json blobs
if ! cmp -s "$W/image.tar" "$OUT" 2>/dev/null; then
  mkdir -p "$(dirname "$OUT")"
  mv "$W/image.tar" "$OUT"
fi
echo "mkimage: $OUT ($NAME)" >&2
