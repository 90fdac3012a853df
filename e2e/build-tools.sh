#!/usr/bin/env bash
# Builds (or reuses) the Kubernetes binaries the e2e needs, from Go modules only:
# kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kubectl (v1.33.13),
# helm (v3.22.0), external-provisioner (v6.3.0) and external-resizer (v1.14.0; v1.13.2 is
# not served by the module proxy). No prebuilt binaries are downloaded.
#
# Usage: e2e/build-tools.sh [all|helm]   (prints the bin directory on its last line)
#   all (default)  everything below;  helm  only helm (for the chart's tests)
# Cache: $CSI_RBDJ_CACHE/k8s (default ~/.cache/csi-rbdj/k8s), outside the repository.
# Cold: ~11-13 min on 2 cores; warm: a version-stamp check per binary (seconds).
# WITH_ATTACHER=1 also builds external-attacher v4.13.0 (the chart does not use it:
# the CSIDriver has attachRequired: false).
set -euo pipefail

KUBE_VERSION=1.33.13
HELM_VERSION=v3.22.0
PROVISIONER_VERSION=v6.3.0
RESIZER_VERSION=v1.14.0
ATTACHER_VERSION=v4.13.0
# external-snapshotter: csi-snapshotter and snapshot-controller (the lowest v8 the module
# proxy lists), built with the client module of the same release (its go.mod replaces it
# with ./client, which the module zip lacks; the proxy serves it though it lists it only
# from v8.6.0), and the snapshot CRDs from that client module.
SNAPSHOTTER_VERSION=v8.4.0
SNAPSHOT_CLIENT_VERSION=v8.4.0

CACHE=${CSI_RBDJ_CACHE:-$HOME/.cache/csi-rbdj}/k8s
BIN=$CACHE/bin
mkdir -p "$BIN"
export PATH=/usr/local/go/bin:$PATH
# The repository's GOFLAGS (CI sets -mod=mod) must not leak into the builds of other
# modules: the sidecars build from their vendor directories.
unset GOFLAGS
MC=$(go env GOMODCACHE)

log() { echo "build-tools: $*" >&2; }

# stamp NAME VERSION: true when $BIN/NAME was built at VERSION.
have() { [ -x "$BIN/$1" ] && [ "$(cat "$BIN/.$1.version" 2>/dev/null)" = "$2" ]; }
stamp() { echo "$2" > "$BIN/.$1.version"; }

# --- Kubernetes: a wrapper module requiring k8s.io/kubernetes, with every staging
# module pinned to its v0.x tag (k8s.io/kubernetes' own go.mod replaces them with ./staging).
build_kube() {
  local kv=$KUBE_VERSION sv=v0.${KUBE_VERSION#1.} kb=$CACHE/kbuild
  local cmds=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl)
  local missing=0 c
  for c in "${cmds[@]}"; do have "$c" "v$kv" || missing=1; done
  if [ $missing = 0 ]; then return 0; fi
  log "building kubernetes v$kv (cold: ~11 min)"
  mkdir -p "$kb"
  (
    cd "$kb"
    go mod download "k8s.io/kubernetes@v$kv"
    local m=$MC/k8s.io/kubernetes@v$kv
    if [ ! -f go.mod ] || ! grep -q "require k8s.io/kubernetes v$kv" go.mod; then
      {
        printf 'module csi-rbdj.dev/e2e/kbuild\n\ngo 1.24.0\n\ngodebug default=go1.24\n\nrequire k8s.io/kubernetes v%s\n\nreplace (\n' "$kv"
        local mod b
        for mod in $(sed -n '/^replace (/,/^)/p' "$m/go.mod" | awk '/=>/{print $1}'); do
          b=${mod#k8s.io/}
          if go mod download "$mod@$sv" 2>/dev/null; then
            printf '\t%s => %s %s\n' "$mod" "$mod" "$sv"
          else
            # not served (code-generator, sample-*): never imported by the binaries
            mkdir -p "stubs/$b"
            printf 'module %s\n\ngo 1.24.0\n' "$mod" > "stubs/$b/go.mod"
            printf '\t%s => ./stubs/%s\n' "$mod" "$b"
          fi
        done
        echo ")"
      } > go.mod.new
      mv go.mod.new go.mod
      cat > tools.go <<'T'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
T
      # This is the wrapper module in the cache, not the project's go.mod.
      go mod tidy
    fi
    local pkgs=()
    for c in "${cmds[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
    go build -trimpath -ldflags="-s -w -X k8s.io/component-base/version.gitVersion=v$kv" -o "$BIN/" "${pkgs[@]}"
  )
  for c in "${cmds[@]}"; do stamp "$c" "v$kv"; done
}

build_helm() {
  have helm "$HELM_VERSION" && return 0
  log "building helm $HELM_VERSION"
  GOBIN=$BIN go install -trimpath -ldflags="-s -w" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  stamp helm "$HELM_VERSION"
}

# build_sidecar MODULE VERSION CMD [CLIENT_VERSION CLIENT_MODULE]: the sidecars' go.mod has replace directives, so
# `go install mod@ver` refuses them: copy the module out of the module cache and build
# it as the main module (from its vendor directory).
build_sidecar() {
  local mod=$1 ver=$2 cmd=$3 src=$CACHE/src/$3
  have "$cmd" "$ver-static" && return 0
  log "building $cmd $ver"
  go mod download "$mod@$ver"
  rm -rf "$src"
  mkdir -p "$CACHE/src"
  cp -r "$MC/$mod@$ver" "$src"
  chmod -R u+w "$src"
  if [ -n "${5:-}" ]; then
    # a nested module the go.mod replaces with a directory (not in the module zip)
    go mod download "$5@$4"
    cp -r "$MC/$5@$4" "$src/client"
    chmod -R u+w "$src/client"
  fi
  # static (no cgo): the e2e wraps it into a one-binary image
  (cd "$src" && CGO_ENABLED=0 go build -trimpath -ldflags="-s -w -X main.version=$ver" -o "$BIN/$cmd" "./cmd/$cmd")
  stamp "$cmd" "$ver-static"
}

# snapshot_crds: the VolumeSnapshot CRDs into $BIN/snapshot-crds, and the
# snapshot-controller's RBAC into $BIN/snapshot-controller-rbac.yaml.
snapshot_crds() {
  have snapshot-crds "$SNAPSHOT_CLIENT_VERSION" && [ -f "$BIN/snapshot-controller-rbac.yaml" ] && return 0
  go mod download github.com/kubernetes-csi/external-snapshotter/client/v8@"$SNAPSHOT_CLIENT_VERSION"
  rm -rf "$BIN/snapshot-crds"
  mkdir -p "$BIN/snapshot-crds"
  cp "$MC/github.com/kubernetes-csi/external-snapshotter/client/v8@$SNAPSHOT_CLIENT_VERSION"/config/crd/snapshot.storage.k8s.io_volumesnapshot*.yaml "$BIN/snapshot-crds/"
  cp "$MC/github.com/kubernetes-csi/external-snapshotter/v8@$SNAPSHOTTER_VERSION/deploy/kubernetes/snapshot-controller/rbac-snapshot-controller.yaml" "$BIN/snapshot-controller-rbac.yaml"
  chmod -R u+w "$BIN/snapshot-crds" "$BIN/snapshot-controller-rbac.yaml"
  mkdir -p "$BIN" && touch "$BIN/snapshot-crds/.keep"
  echo "$SNAPSHOT_CLIENT_VERSION" > "$BIN/.snapshot-crds.version"
}

case "${1:-all}" in
  all)
    build_kube
    build_helm
    build_sidecar github.com/kubernetes-csi/external-provisioner/v6 "$PROVISIONER_VERSION" csi-provisioner
    build_sidecar github.com/kubernetes-csi/external-resizer "$RESIZER_VERSION" csi-resizer
    # its go.mod replaces the client module with ./client (the same release)
    build_sidecar github.com/kubernetes-csi/external-snapshotter/v8 "$SNAPSHOTTER_VERSION" csi-snapshotter "$SNAPSHOT_CLIENT_VERSION" github.com/kubernetes-csi/external-snapshotter/client/v8
    build_sidecar github.com/kubernetes-csi/external-snapshotter/v8 "$SNAPSHOTTER_VERSION" snapshot-controller "$SNAPSHOT_CLIENT_VERSION" github.com/kubernetes-csi/external-snapshotter/client/v8
    snapshot_crds
    if [ -n "${WITH_ATTACHER:-}" ]; then
      build_sidecar github.com/kubernetes-csi/external-attacher/v4 "$ATTACHER_VERSION" csi-attacher
    fi
    ;;
  helm) build_helm ;;
  *) echo "usage: $0 [all|helm]" >&2; exit 2 ;;
esac
echo "$BIN"
