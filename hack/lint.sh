#!/usr/bin/env bash
# Static analysis beyond `go vet`, run by `make vet` (with both build-tag sets):
#   staticcheck (honnef.co/go/tools v0.8.2) and Kubernetes' structured-logging
#   check logcheck (sigs.k8s.io/logtools v0.11.0) with contextual logging on:
#   every log call goes through a logger taken from the request's context or
#   stored on the object that owns the work, never through klog's globals.
# The tools are built once into ${CSI_RBDJ_CACHE:-~/.cache/csi-rbdj}/tools
# (outside the repository; a version stamp per tool) from the Go module proxy.
# Usage: hack/lint.sh [build tags]   e.g. hack/lint.sh ceph,pacific
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH

STATICCHECK_VERSION=v0.8.2
LOGTOOLS_VERSION=v0.11.0
TAGS=${1:-}

CACHE=${CSI_RBDJ_CACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/csi-rbdj}/tools
BIN=$CACHE/bin
mkdir -p "$BIN"

# tool NAME VERSION PACKAGE: builds $BIN/NAME unless it was built at VERSION.
tool() {
  local name=$1 version=$2 pkg=$3
  if [ -x "$BIN/$name" ] && [ "$(cat "$BIN/.$name.version" 2>/dev/null)" = "$version" ]; then
    return 0
  fi
  echo "lint: building $name $version" >&2
  # The repository's GOFLAGS (CI sets -mod=mod) must not reach other modules' builds.
  (cd "$CACHE" && GOFLAGS= GOBIN="$BIN" go install "$pkg@$version")
  echo "$version" > "$BIN/.$name.version"
}
tool staticcheck "$STATICCHECK_VERSION" honnef.co/go/tools/cmd/staticcheck
tool logcheck "$LOGTOOLS_VERSION" sigs.k8s.io/logtools/logcheck

tagflag=()
if [ -n "$TAGS" ]; then tagflag=(-tags "$TAGS"); fi

echo "lint: staticcheck ${TAGS:+(tags $TAGS)}" >&2
"$BIN/staticcheck" "${tagflag[@]}" ./...
echo "lint: logcheck ${TAGS:+(tags $TAGS)}" >&2
# logcheck's own -tags flag has no effect: go/packages takes them from GOFLAGS.
# hack/logcheck.conf exempts the one file holding klog's global configuration.
GOFLAGS="${GOFLAGS:-}${TAGS:+ -tags=$TAGS}" "$BIN/logcheck" -check-contextual -config hack/logcheck.conf ./...
