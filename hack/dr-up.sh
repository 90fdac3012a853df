#!/usr/bin/env bash
# Brings up the disaster-recovery setup of `make dr-drill` on this machine:
# two single-node Ceph clusters (site-a: mon 4100/4101, site-b: mon
# 4200/4201; memstore, auth none, no mgr, pool "rbd") and journal-mode
# rbd-mirror in both directions (one daemon per site), with the scripts of
# hack/dr/ (the rbd-mirror recipe) copied into the work dir, outside the
# repository. Idempotent: running clusters and daemons are reused.
#
# Prints the work dir on stdout (the tests' CSI_RBDJ_DR_DIR); progress on stderr.
# Env: DR_DIR work dir (default /var/tmp/csi-rbdj-dr), DR_FRESH=1 wipe first,
#      DR_PORT_A / DR_PORT_B mon ports (default 4100 / 4200).
# Stop with hack/dr-down.sh.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
export MIRROR_DIR=${DR_DIR:-/var/tmp/csi-rbdj-dr}
log() { echo "[dr-up $(date +%T.%3N)] $*" >&2; }
for tool in ceph-mon ceph-osd rbd rbd-mirror python3; do
  command -v $tool >/dev/null || { log "$tool missing: hack/install-deps.sh ceph (Debian: ceph-mon ceph-osd rbd-mirror)"; exit 1; }
done
[ "${DR_FRESH:-0}" = 1 ] && "$HERE/dr-down.sh" --wipe >&2
mkdir -p "$MIRROR_DIR/conf"
cp "$HERE"/dr/*.sh "$HERE"/lib/ceph-cluster.sh "$MIRROR_DIR/"
up() {  # site port
  CEPH_CLUSTER=$1 CEPH_DIR=$MIRROR_DIR/$1 CEPH_MON_PORT=$2 CEPH_RBD_POOL=rbd CEPH_MGR=0 \
    CEPH_FRESH=${DR_FRESH:-0} "$MIRROR_DIR/cluster-up.sh" >/dev/null
  ln -sfn "$MIRROR_DIR/$1/$1.conf" "$MIRROR_DIR/conf/$1.conf"
}
up site-a "${DR_PORT_A:-4100}" & pa=$!
up site-b "${DR_PORT_B:-4200}" & pb=$!
wait $pa; wait $pb
# The replayers poll an idle journal every 0.5 s (default 5 s).
RBD_MIRROR_ARGS=${RBD_MIRROR_ARGS:---rbd-mirror-journal-poll-age 0.5} "$MIRROR_DIR/mirror-setup.sh" >&2
log "site-a and site-b up, rbd-mirror both ways, in $MIRROR_DIR"
echo "$MIRROR_DIR"
