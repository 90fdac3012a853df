#!/usr/bin/env bash
# The disaster-recovery drill (make dr-drill): brings up two single-node
# Ceph clusters and rbd-mirror in both directions (hack/dr-up.sh, fresh),
# runs the two-site tests of pkg/driver against them (TestDR*: the drill
# TestDRDrill — failover by force-promotion after SIGKILL of site-a's node
# plugin, then failback — the never-synced replica, the laggy replicator,
# the csi-addons planned failover/failback, the read-only staging of a
# replica while its primary is written), and tears everything down,
# also when a test fails or the run is interrupted.
# Env: DR_DIR work dir (default /var/tmp/csi-rbdj-dr), DR_RUN test pattern
#      (default ^TestDR), CEPHTAGS, GO, DR_TIMEOUT (default 25m).
# The full log goes to _output/dr-drill.log.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$HERE/.."
export DR_DIR=${DR_DIR:-/var/tmp/csi-rbdj-dr}
GO=${GO:-go}
start=$(date +%s)
trap '"$HERE/dr-down.sh" --wipe >/dev/null; echo "dr-drill: torn down; $(( $(date +%s) - start )) s in all" >&2' EXIT
DR_FRESH=1 "$HERE/dr-up.sh" >/dev/null
echo "dr-drill: two sites up in $(( $(date +%s) - start )) s ($DR_DIR)" >&2
mkdir -p _output
CSI_RBDJ_DR_DIR=$DR_DIR $GO test -count=1 -timeout "${DR_TIMEOUT:-25m}" -tags "${CEPHTAGS:-ceph,pacific}" \
  -run "${DR_RUN:-^TestDR}" -v ./pkg/driver/ > _output/dr-drill.log 2>&1 && rc=0 || rc=$?
# The figures and the verdicts; the whole log on failure.
if [ $rc = 0 ]; then
  grep -E '^(=== RUN|--- |PASS|FAIL|ok )|\[drill |equals|caught up|resynced|promoted|read-only|event on PersistentVolume|disconnected from its journal' _output/dr-drill.log || true
else
  cat _output/dr-drill.log
fi
echo "dr-drill: go test exit $rc (log: _output/dr-drill.log)" >&2
exit $rc
