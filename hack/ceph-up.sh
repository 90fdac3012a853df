#!/usr/bin/env bash
# Starts a single-node Ceph cluster for tests and development: one mon (a) and
# one memstore OSD (0) on 127.0.0.1, cephx on, pool "rbd" created and
# `rbd pool init`ed. Installs Debian's Ceph packages first if they are missing.
#
# Idempotent: if the cluster in $CEPH_DIR is up it is reused (about 0.5 s);
# otherwise leftovers are stopped (by pid file only), the state is wiped and
# the cluster is recreated (a few seconds). Concurrent runs serialise on
# $CEPH_DIR.lock.
#
# Prints the path of ceph.conf on stdout (last line); progress goes to stderr.
# Clients find everything through that file:
#   $CEPH_DIR/ceph.conf          mon_host, keyring = $CEPH_DIR/keyring
#   $CEPH_DIR/keyring            client.admin's key (cephx), mode 0600
#   $CEPH_DIR/client.admin.key   the same key alone (for tests passing an
#                                explicit user id + key), mode 0600
# e.g.  CEPH_CONF=$(hack/ceph-up.sh) && ceph -s
#
# Environment:
#   CEPH_DIR        state directory        (default /var/tmp/csi-rbdj-ceph)
#   CEPH_MON_PORT   msgr2 port of the mon  (default 13300; msgr1 = port+1)
#   CEPH_FRESH=1    always wipe and recreate
#   CEPH_RBD_POOL   pool to create         (default rbd)
#   CEPH_EXTRA_CONF extra "key = value" lines for [global]
#
# Stop with hack/ceph-down.sh [--wipe].
set -euo pipefail

CEPH_DIR=${CEPH_DIR:-/var/tmp/csi-rbdj-ceph}
MON_PORT=${CEPH_MON_PORT:-13300}
MON_PORT1=$((MON_PORT + 1))
RBD_POOL=${CEPH_RBD_POOL:-rbd}
CONF=$CEPH_DIR/ceph.conf
HERE=$(cd "$(dirname "$0")" && pwd)
export CEPH_CONF=$CONF

log() { echo "[ceph-up $(date +%T.%3N)] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
. "$HERE/lib/ceph-cluster.sh"

# ---- packages ---------------------------------------------------------------
need=(ceph-mon ceph-osd ceph rbd monmaptool ceph-authtool)
for b in "${need[@]}"; do
  if ! command -v "$b" >/dev/null; then
    log "Ceph binaries missing ($b): installing Debian's Ceph packages"
    "$HERE/install-deps.sh" ceph >&2 || die "could not install Ceph (hack/install-deps.sh ceph)"
    break
  fi
done

# ---- one at a time ----------------------------------------------------------
mkdir -p "$(dirname "$CEPH_DIR")"
# (the daemons must not inherit fd 9, or they would hold the lock forever)
exec 9>"$CEPH_DIR.lock"
flock -w 300 9 || die "another hack/ceph-up.sh holds $CEPH_DIR.lock for 5 minutes"

# ---- reuse a running cluster ------------------------------------------------
if [ "${CEPH_FRESH:-0}" != 1 ] && [ -f "$CONF" ] && [ -f "$CEPH_DIR/ready" ] \
   && cluster_running && ! timeout 10 ceph health 2>/dev/null | grep -q 'full'; then
  log "cluster already running ($CEPH_DIR)"
  echo "$CONF"; exit 0
fi

# ---- stop leftovers (by pid file only) and wipe -----------------------------
stop_leftovers
rm -rf "$CEPH_DIR"
mkdir -p "$CEPH_DIR"/{run,log,mon.a,osd.0,crash}
chmod 700 "$CEPH_DIR"

FSID=$(cat /proc/sys/kernel/random/uuid)
{
  echo "[global]"
  conf_global "$FSID" cephx
  cat <<EOF
auth_allow_insecure_global_id_reclaim = false
keyring = $CEPH_DIR/keyring
# daemons only (below): clients of one user would fight over one socket
admin_socket =
EOF
  conf_single_osd
  cat <<EOF
${CEPH_EXTRA_CONF:-}
[mon]
mon_data = $CEPH_DIR/mon.\$id
admin_socket = $CEPH_DIR/run/\$name.asok
[osd]
osd_data = $CEPH_DIR/osd.\$id
admin_socket = $CEPH_DIR/run/\$name.asok
keyring = $CEPH_DIR/osd.\$id/keyring
osd_objectstore = memstore
memstore_device_bytes = 8589934592
memstore_page_set = true
# memstore's used-bytes counter can underflow (seen after zero/truncate ops),
# which makes the OSD report itself full and refuse every write: compute
# usage from the PG stats instead, against the same 8 GiB.
fake_statfs_for_testing = 8589934592
osd_class_dir = /usr/lib/x86_64-linux-gnu/rados-classes
osd_class_load_list = *
osd_class_default_list = *
EOF
} >"$CONF"

# ---- keys -------------------------------------------------------------------
umask 077
ceph-authtool --create-keyring "$CEPH_DIR/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
ceph-authtool "$CEPH_DIR/keyring" --gen-key -n client.admin \
  --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' --cap mds 'allow *' >/dev/null
ceph-authtool "$CEPH_DIR/keyring" -n client.admin -p >"$CEPH_DIR/client.admin.key"
umask 022

# ---- mon --------------------------------------------------------------------
log "mkfs mon.a (fsid $FSID, port $MON_PORT)"
make_monmap "$FSID"
ceph-mon --mkfs -i a -c "$CONF" --monmap "$CEPH_DIR/monmap" --keyring "$CEPH_DIR/keyring" \
  >"$CEPH_DIR/log/mon-mkfs.out" 2>&1 || { cat "$CEPH_DIR/log/mon-mkfs.out" >&2; die "mon mkfs failed"; }
# daemonizes (the parent returns once the child is up) and writes run/mon.a.pid
ceph-mon -i a -c "$CONF" 9>&- 2>>"$CEPH_DIR/log/mon-start.out" \
  || { tail -5 "$CEPH_DIR/log/mon.a.log" >&2; die "mon did not start (port $MON_PORT in use? set CEPH_MON_PORT)"; }
wait_mon || die "mon does not answer; see $CEPH_DIR/log/mon.a.log"
log "mon up"

# ---- osd --------------------------------------------------------------------
OSD_UUID=$(cat /proc/sys/kernel/random/uuid)
OSD_SECRET=$(ceph-authtool --gen-print-key)
echo "{\"cephx_secret\": \"$OSD_SECRET\"}" >"$CEPH_DIR/osd.0/new.json"
OSD_ID=$(ceph osd new "$OSD_UUID" -i "$CEPH_DIR/osd.0/new.json")
rm -f "$CEPH_DIR/osd.0/new.json"
[ "$OSD_ID" = 0 ] || die "unexpected osd id $OSD_ID"
ceph-authtool --create-keyring "$CEPH_DIR/osd.0/keyring" -n osd.0 --add-key "$OSD_SECRET" >/dev/null
log "mkfs osd.0 (memstore)"
ceph-osd -i 0 -c "$CONF" --mkfs --osd-uuid "$OSD_UUID" >"$CEPH_DIR/log/osd-mkfs.out" 2>&1 \
  || { cat "$CEPH_DIR/log/osd-mkfs.out" >&2; die "osd mkfs failed"; }
# daemonizes; adds itself to the CRUSH map on start
ceph-osd -i 0 -c "$CONF" 9>&- 2>>"$CEPH_DIR/log/osd-start.out" \
  || { tail -5 "$CEPH_DIR/log/osd.0.log" >&2; die "osd did not start"; }
wait_osd 0 || die "osd did not come up; see $CEPH_DIR/log/osd.0.log"
log "osd.0 up+in"

# ---- rbd pool ---------------------------------------------------------------
create_rbd_pool "$RBD_POOL"
touch "$CEPH_DIR/ready"
echo "$CONF"
