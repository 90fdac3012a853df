#!/usr/bin/env bash
# Minimal single-node Ceph (Debian 16.2.x Pacific) without systemd.
# One mon (a), one osd (0), optional mgr (x); everything on 127.0.0.1,
# all state under $CEPH_DIR. Auth disabled. Idempotent: if the cluster in
# $CEPH_DIR is already up it is reused, otherwise it is wiped and recreated.
# Prints the path of ceph.conf on stdout (last line); progress goes to stderr.
#
# Env knobs:
#   CEPH_DIR        state dir               (default /tmp/ceph-dev/cluster)
#   CEPH_OBJSTORE   memstore | bluestore    (default memstore)
#   CEPH_MON_PORT   msgr2 port of the mon   (default 3300; v1 = port+1)
#   CEPH_MGR        1 = also start ceph-mgr if installed (default 0)
#   CEPH_FRESH      1 = always wipe and recreate (default 0)
#   CEPH_EXTRA_CONF extra "key = value" lines appended to [global]
#   CEPH_RBD_POOL   pool to create + "rbd pool init" (default rbd; "" = none)
#   CEPH_CLUSTER    cluster name: conf is $CEPH_DIR/$CEPH_CLUSTER.conf and
#                   daemons get --cluster NAME (default ceph)
# (from the rbd-mirror recipe; used by hack/dr-up.sh)
set -euo pipefail

CEPH_DIR=${CEPH_DIR:?CEPH_DIR must name the state dir}
CLUSTER=${CEPH_CLUSTER:-ceph}
OBJSTORE=${CEPH_OBJSTORE:-memstore}
MON_PORT=${CEPH_MON_PORT:-3300}
MON_PORT1=$((MON_PORT + 1))
WANT_MGR=${CEPH_MGR:-0}
RBD_POOL=${CEPH_RBD_POOL-rbd}
CONF=$CEPH_DIR/$CLUSTER.conf
export CEPH_CONF=$CONF
log() { echo "[cluster-up $CLUSTER $(date +%T.%3N)] $*" >&2; }
# the helpers shared with hack/ceph-up.sh: next to this script in the DR work
# dir (hack/dr-up.sh copies them there), in hack/lib in the repository
HERE=$(cd "$(dirname "$0")" && pwd)
LIB=$HERE/ceph-cluster.sh
[ -f "$LIB" ] || LIB=$HERE/../lib/ceph-cluster.sh
. "$LIB"

# ---- reuse a running cluster ------------------------------------------------
if [ "${CEPH_FRESH:-0}" != 1 ] && [ -f "$CONF" ] && cluster_running; then
  log "cluster already running"
  echo "$CONF"; exit 0
fi

# ---- stop leftovers (by pid file only) and wipe -----------------------------
stop_leftovers
rm -rf "$CEPH_DIR"
mkdir -p "$CEPH_DIR"/{run,log,mon.a,osd.0,mgr.x}

FSID=$(cat /proc/sys/kernel/random/uuid)
{
  echo "[global]"
  conf_global "$FSID" none
  cat <<EOF
auth_supported = none
keyring = /dev/null
admin_socket = $CEPH_DIR/run/\$name.asok
EOF
  conf_single_osd
  cat <<EOF
${CEPH_EXTRA_CONF:-}
[client]
# several rbd CLI processes / rbd-mirror contexts at once: unique sockets
admin_socket = $CEPH_DIR/run/\$name.\$pid.asok
[mon]
mon_data = $CEPH_DIR/mon.\$id
[osd]
osd_data = $CEPH_DIR/osd.\$id
osd_objectstore = $OBJSTORE
memstore_device_bytes = 8589934592
memstore_page_set = true
bluestore_block_create = true
bluestore_block_size = 10737418240
osd_memory_target = 1073741824
bluestore_fsck_on_mount = false
osd_class_dir = /usr/lib/x86_64-linux-gnu/rados-classes
osd_class_load_list = *
osd_class_default_list = *
[mgr]
mgr_data = $CEPH_DIR/mgr.\$id
EOF
} >"$CONF"

# ---- mon --------------------------------------------------------------------
log "mkfs mon.a (fsid $FSID)"
make_monmap "$FSID"
ceph-mon --cluster "$CLUSTER" --mkfs -i a -c "$CONF" --monmap "$CEPH_DIR/monmap" >"$CEPH_DIR/log/mon-mkfs.out" 2>&1
# daemonizes (parent returns once the child is up), writes run/mon.a.pid
ceph-mon --cluster "$CLUSTER" -i a -c "$CONF" 2>>"$CEPH_DIR/log/mon-start.out" \
  || { tail -5 "$CEPH_DIR/log/mon.a.log" >&2; exit 1; }
wait_mon || { log "mon does not answer; see $CEPH_DIR/log/mon.a.log"; exit 1; }
log "mon up"

# ---- mgr (optional) ---------------------------------------------------------
if [ "$WANT_MGR" = 1 ] && command -v ceph-mgr >/dev/null; then
  ceph-mgr --cluster "$CLUSTER" -i x -c "$CONF" 2>>"$CEPH_DIR/log/mgr-start.out"
  log "mgr started"
fi

# ---- osd --------------------------------------------------------------------
OSD_UUID=$(cat /proc/sys/kernel/random/uuid)
OSD_ID=$(ceph osd new "$OSD_UUID")      # -> 0
log "mkfs osd.$OSD_ID ($OBJSTORE)"
ceph-osd --cluster "$CLUSTER" -i "$OSD_ID" -c "$CONF" --mkfs --osd-uuid "$OSD_UUID" >"$CEPH_DIR/log/osd-mkfs.out" 2>&1
# daemonizes; adds itself to the CRUSH map (host=$(hostname)) on start
ceph-osd --cluster "$CLUSTER" -i "$OSD_ID" -c "$CONF" 2>>"$CEPH_DIR/log/osd-start.out" \
  || { tail -5 "$CEPH_DIR/log/osd.$OSD_ID.log" >&2; exit 1; }
wait_osd "$OSD_ID" || { log "osd did not come up"; exit 1; }
log "osd.$OSD_ID up+in"

# ---- rbd pool ---------------------------------------------------------------
if [ -n "$RBD_POOL" ]; then
  create_rbd_pool "$RBD_POOL"
fi
echo "$CONF"
